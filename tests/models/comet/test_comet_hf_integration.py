"""CoMeT as a transformers model: its own model type through the Auto classes, and `generate` with
transformers' arguments (what lm-evaluation-harness passes), padded batches included."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import VOCAB, tiny_comet
from transformers import AutoConfig, AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

from framework.models.comet import CoMeTForCausalLM, CoMeTHFConfig


def test_saved_config_has_its_own_model_type_with_the_backbone_inside(tmp_path):
    model = tiny_comet("qwen2", chunk_size=12)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "longctx_comet" and saved["architectures"] == ["CoMeTForCausalLM"]
    assert saved["backbone"]["model_type"] == "qwen2" and saved["comet"]["chunk_size"] == 12
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, CoMeTHFConfig) and config.chunk_size == 12
    assert config.vocab_size == VOCAB and config.max_position_embeddings >= 1 << 20


def test_config_fields_and_the_running_comet_config_are_one(tmp_path):
    model = tiny_comet("qwen3")
    model.config.gradient_checkpointing = True  # what gradient_checkpointing_enable does
    assert model.comet_config.gradient_checkpointing is True
    model.comet_config.chunk_size = 24
    assert model.config.chunk_size == 24 and model.config.to_dict()["comet"]["chunk_size"] == 24


def test_auto_model_loads_with_dtype_and_a_fresh_process_without_the_package_fails_loudly(tmp_path):
    model = tiny_comet("llama")
    model.save_pretrained(tmp_path)
    half = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert isinstance(half, CoMeTForCausalLM)
    assert half.compress_embed.dtype == torch.bfloat16 and half.backbone.lm_head.weight.dtype == torch.bfloat16
    half.tie_weights()  # what lm-evaluation-harness calls after loading
    script = textwrap.dedent(f"""
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        except Exception as err:
            print("refused:", type(err).__name__, err)
        else:
            print("loaded")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300).stdout
    assert out.startswith("refused:") and "longctx_comet" in out, out


def test_a_plain_folder_is_not_taken_for_comet(tmp_path):
    model = tiny_comet("qwen3")
    model.backbone.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"plain 'qwen3' model.*from_base"):
        CoMeTForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_gives_each_prompt_what_it_gets_alone(side):
    model = tiny_comet("qwen3")
    torch.manual_seed(0)
    long, short = torch.randint(1, VOCAB, (1, 21)), torch.randint(1, VOCAB, (1, 14))
    pad = 0
    filler = torch.full((1, 7), pad)
    short_padded = torch.cat([filler, short], 1) if side == "left" else torch.cat([short, filler], 1)
    batch = torch.cat([long, short_padded])
    mask = (torch.arange(21)[None] >= 7) if side == "left" else (torch.arange(21)[None] < 14)
    mask = torch.cat([torch.ones(1, 21, dtype=torch.bool), mask]).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=9, pad_token_id=pad, eos_token_id=None)
    assert out.shape == (2, 30) and torch.equal(out[:, :21], batch)
    assert torch.equal(out[0, 21:], model.generate(long, max_new_tokens=9, eos_token_id=None)[0, 21:])
    assert torch.equal(out[1, 21:], model.generate(short, max_new_tokens=9, eos_token_id=None)[0, 14:])


class StopAfter(StoppingCriteria):
    def __init__(self, width: int, n: int):
        self.width, self.n, self.seen = width, n, []

    def __call__(self, input_ids, scores, **kwargs):
        self.seen.append(input_ids.shape[1])
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - self.width >= self.n, dtype=torch.bool)


def test_max_length_stopping_criteria_and_scores_follow_transformers():
    model = tiny_comet("llama")
    prompt = torch.randint(1, VOCAB, (2, 10))
    assert model.generate(prompt, max_length=16, eos_token_id=None).shape == (2, 16)
    stop = StopAfter(10, 3)
    out = model.generate(prompt, max_length=40, stopping_criteria=StoppingCriteriaList([stop]), use_cache=True,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.shape == (2, 13) and stop.seen == [11, 12, 13]
    result = model.generate(prompt, max_new_tokens=4, return_dict_in_generate=True, output_scores=True,
                            eos_token_id=None)
    assert result.sequences.shape == (2, 14) and len(result.scores) == 4
    assert torch.equal(result.scores[0].argmax(-1), result.sequences[:, 10])


def test_the_loss_forward_accepts_what_transformers_callers_pass():
    model = tiny_comet("qwen3")
    ids = torch.randint(0, VOCAB, (1, 30))
    with torch.no_grad():
        plain = model(ids).logits
        torch.testing.assert_close(model(input_ids=ids, use_cache=False, return_dict=True).logits, plain)
    with pytest.raises(TypeError, match="past_key_values"):
        model(input_ids=ids, past_key_values=object())
