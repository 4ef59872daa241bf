"""The contract the training orchestration builds on: tokenizer, PasskeyTask, RankBatches."""

import hashlib
import itertools

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from data_pipelines.errors import DataConfigError
from data_pipelines.loader import RankBatches, RankBatchLoader, epoch_permutation
from data_pipelines.synthetic import PasskeyTask
from data_pipelines.tokenizer import load_project_tokenizer, project_tokenizer_dir


@pytest.fixture(scope="module")
def tok():
    return load_project_tokenizer()


class IndexSource:
    """A map-style source whose sample is its own index, to check the order by value."""

    def __init__(self, n, seq_len=3):
        self.n, self.seq_len = n, seq_len

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"input_ids": torch.full((self.seq_len,), i, dtype=torch.long)}


def batch_hash(batch):
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(batch[key].numpy().tobytes())
    return h.hexdigest()


def take(iterable, k):
    return list(itertools.islice(iterable, k))


# -- tokenizer -------------------------------------------------------------------------------
def test_project_tokenizer_loads_with_autotokenizer():
    t = AutoTokenizer.from_pretrained(project_tokenizer_dir())
    assert 4096 <= len(t) <= 8192
    assert t.eos_token == t.pad_token == "<|endoftext|>"
    assert t.convert_tokens_to_ids("<|im_start|>") != t.convert_tokens_to_ids("<|im_end|>")
    ids = t("The pass key is 90210.", add_special_tokens=False)["input_ids"]
    assert t.decode(ids) == "The pass key is 90210."
    assert t.convert_ids_to_tokens(ids)[-6:] == ["9", "0", "2", "1", "0", "."]


def test_project_tokenizer_chat_template_masks_assistant(tok):
    msgs = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    text = tok.decode(out["input_ids"])
    assert text == "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n"
    answer = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(answer) == "hi<|im_end|>"


# -- passkey ---------------------------------------------------------------------------------
def test_passkey_sample_shapes_labels_and_text(tok):
    task = PasskeyTask(tok, seq_len=256, num_samples=50, seed=0, digits=5)
    assert len(task) == 50
    s = task[7]
    for key in ("input_ids", "labels", "document_ids"):
        assert s[key].dtype == torch.long and s[key].shape == (256,)
    assert (s["document_ids"] == 0).all()
    answer_pos = (s["labels"] != -100).nonzero().flatten().tolist()
    assert answer_pos == list(range(251, 256))
    prompt, answer = task.example(7)
    assert answer == task.key(7) and len(answer) == 5 and answer.isdigit()
    assert prompt.endswith("The pass key is ")
    assert f"The pass key is {answer}." in prompt
    assert tok.decode(s["input_ids"][answer_pos]) == answer
    assert tok.decode(s["input_ids"]) == prompt + answer


def test_passkey_is_deterministic_and_depth_is_respected(tok):
    a = PasskeyTask(tok, seq_len=512, num_samples=20, seed=3)
    b = PasskeyTask(tok, seq_len=512, num_samples=20, seed=3)
    c = PasskeyTask(tok, seq_len=512, num_samples=20, seed=4)
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(20))
    assert any(not torch.equal(a[i]["input_ids"], c[i]["input_ids"]) for i in range(20))
    shallow = PasskeyTask(tok, seq_len=2048, num_samples=4, depth=0.0).example(0)[0]
    deep = PasskeyTask(tok, seq_len=2048, num_samples=4, depth=1.0).example(0)[0]
    assert shallow.index("The pass key is") < 200
    assert deep.index("The pass key is") > len(deep) - 300


def test_passkey_scales_to_a_million_tokens(tok):
    task = PasskeyTask(tok, seq_len=1_000_000, num_samples=2, depth=0.5)
    s = task[1]
    assert s["input_ids"].shape == (1_000_000,)
    assert (s["labels"] != -100).sum() == 5


def test_passkey_rejects_too_short_seq_len(tok):
    with pytest.raises(DataConfigError, match="seq_len=20 is too short"):
        PasskeyTask(tok, seq_len=20, num_samples=2)


# -- RankBatches -----------------------------------------------------------------------------
def test_rank_batches_follow_the_global_order():
    n, B, W = 10, 2, 2
    src = IndexSource(n)
    for r in range(W):
        ds = RankBatches(src, batch_size=B, rank=r, world_size=W, seed=5, start_sample=3)
        for s, batch in enumerate(take(iter(ds), 7)):
            got = batch["input_ids"][:, 0].tolist()
            want = []
            for p in range(3 + s * B * W + r * B, 3 + s * B * W + r * B + B):
                want.append(int(epoch_permutation(n, 5, p // n)[p % n]))
            assert got == want
    perms = [epoch_permutation(n, 5, e).tolist() for e in range(3)]
    assert all(sorted(p) == list(range(n)) for p in perms) and perms[0] != perms[1]


def test_exact_resume_10_equals_5_plus_5():
    src = IndexSource(23)
    straight = [batch_hash(b) for b in take(iter(RankBatches(src, batch_size=3, seed=1)), 10)]
    first = RankBatches(src, batch_size=3, seed=1)
    part1 = [batch_hash(b) for b in take(iter(first), 5)]
    state = first.state_dict()
    assert state == {"samples_consumed": 15, "seed": 1}
    resumed = RankBatches(src, batch_size=3, seed=1)
    resumed.load_state_dict(state)
    part2 = [batch_hash(b) for b in take(iter(resumed), 5)]
    assert part1 + part2 == straight


def _global_stream(src, B, W, steps, start=0):
    """Samples in global order, concatenating ranks step by step."""
    iters = [iter(RankBatches(src, batch_size=B, rank=r, world_size=W, seed=9, start_sample=start)) for r in range(W)]
    out = []
    for _ in range(steps):
        for it in iters:
            out.extend(next(it)["input_ids"][:, 0].tolist())
    return out


def test_resharding_keeps_the_global_sequence():
    src = IndexSource(17)
    two = _global_stream(src, B=4, W=2, steps=6)
    one = _global_stream(src, B=8, W=1, steps=6)
    four = _global_stream(src, B=2, W=4, steps=6)
    assert two == one == four
    # 2 ranks for 3 steps, then resume on 1 rank; then on 4 ranks: still the same stream.
    rank0 = RankBatches(src, batch_size=4, rank=0, world_size=2, seed=9)
    take(iter(rank0), 3)
    state = rank0.state_dict()
    assert state["samples_consumed"] == 24
    resumed_one = _global_stream(src, B=8, W=1, steps=3, start=state["samples_consumed"])
    assert two[:24] + resumed_one == one
    resumed_four = _global_stream(src, B=2, W=4, steps=3, start=state["samples_consumed"])
    assert two[:24] + resumed_four == four


def test_loader_workers_reproduce_the_order_and_state():
    src = IndexSource(13)
    plain = [batch_hash(b) for b in take(iter(RankBatches(src, batch_size=2, seed=2)), 9)]
    ds = RankBatches(src, batch_size=2, seed=2)
    with_workers = [batch_hash(b) for b in take(iter(DataLoader(ds, batch_size=None, num_workers=2)), 9)]
    assert with_workers == plain
    loader = RankBatchLoader(RankBatches(src, batch_size=2, seed=2), num_workers=2)
    got = [batch_hash(b) for b in take(iter(loader), 4)]
    assert loader.state_dict()["samples_consumed"] == 8
    again = RankBatchLoader(RankBatches(src, batch_size=2, seed=2), num_workers=2)
    again.load_state_dict(loader.state_dict())
    got += [batch_hash(b) for b in take(iter(again), 5)]
    assert got == plain


def test_rank_batches_with_passkey_source(tok):
    task = PasskeyTask(tok, seq_len=128, num_samples=8, seed=0)
    batch = next(iter(RankBatches(task, batch_size=4, rank=1, world_size=2, seed=0)))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["document_ids"].shape == (4, 128)


def test_rank_batches_errors_name_the_fix():
    with pytest.raises(DataConfigError, match=r"rank=2 must be an int in \[0, world_size=2\)"):
        RankBatches(IndexSource(4), batch_size=1, rank=2, world_size=2)
    ds = RankBatches(IndexSource(4), batch_size=1, seed=1)
    with pytest.raises(DataConfigError, match="seed=7 but this loader was built with seed=1"):
        ds.load_state_dict({"samples_consumed": 3, "seed": 7})
