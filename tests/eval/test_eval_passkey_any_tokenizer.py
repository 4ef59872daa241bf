"""Passkey with a tokenizer that groups digits (as Llama 3 does, up to three per token): keys take fewer tokens than
digits, answers are compared as text, and decoding stops where the answer's digits end."""

from __future__ import annotations

import re

import pytest
import torch

from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER, PasskeyTask
from framework.eval.passkey import answer_done, evaluate_passkey, score_answer


@pytest.fixture(scope="module")
def grouping_tokenizer():
    """A real fast tokenizer: words, punctuation, whitespace runs and runs of up to three digits are tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = PASSKEY_REPEAT_FILLER + PasskeyTask.INTRO + PasskeyTask.QUESTION + \
        " The pass key is . Remember it. is the pass key."
    pattern = r"\d{1,3}|[A-Za-z]+|[^\sA-Za-z\d]|\s+"
    pieces = set(re.findall(pattern, text)) | {str(n) for n in range(1000)} | {f"{n:02d}" for n in range(100)} | \
        {f"{n:03d}" for n in range(1000)}
    vocab = {"[UNK]": 0, "<eos>": 1, **{p: i + 2 for i, p in enumerate(sorted(pieces))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")


def test_keys_take_fewer_tokens_than_digits_and_labels_cover_exactly_the_key(grouping_tokenizer):
    task = PasskeyTask(grouping_tokenizer, seq_len=300, num_samples=20, seed=1, digits=5,
                       filler=PASSKEY_REPEAT_FILLER)
    for i in range(20):
        n = task.answer_len(i)
        assert n == 2  # five digits: three, then two
        sample = task[i]
        labelled = sample["labels"] != -100
        assert int(labelled.sum()) == n and bool(labelled[-n:].all())
        prompt, answer = task.example(i)
        assert answer == task.key(i) and prompt.endswith("The pass key is ")


def test_an_answer_is_done_when_its_digits_end_or_reach_the_key_length():
    assert not answer_done(" ", 5) and not answer_done("123", 5)
    assert answer_done("123.", 5) and answer_done("12345", 5) and answer_done("123456", 5)
    assert score_answer(" 12345.", "12345") and not score_answer("123456", "12345")
    assert not score_answer("1. The pass key", "12345")


def test_evaluate_passkey_runs_on_a_grouping_tokenizer(grouping_tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    torch.manual_seed(0)
    base = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(grouping_tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        head_dim=8)).eval()
    model = CoMeTForCausalLM.from_base(base, CoMeTConfig(chunk_size=64, global_mem_size=4, temp_stride=8,
                                                         temp_budget=16)).eval()
    results = evaluate_passkey(model, grouping_tokenizer, [200], [0.5], trials=3, seed=2, digits=5,
                               filler=PASSKEY_REPEAT_FILLER)
    cell = results[0]
    assert cell.trials == 3 and 0 <= cell.correct <= 3 and len(cell.answers) == 3
    for answer in cell.answers:
        tokens = grouping_tokenizer(answer["answer"], add_special_tokens=False)["input_ids"]
        assert len(tokens) <= 5 + 4  # the decoding cap
        assert cell.correct == sum(score_answer(a["answer"], a["key"]) for a in cell.answers)
