"""Windows and packing over a store, chunk plans, chat samples, the factory, and resume on real data."""

import hashlib
import itertools

import numpy as np
import pytest
import torch

from data_pipelines import DataConfigError, build_source
from data_pipelines.chunking import ChunkedSource, chunk_plan, semantic_token_ids
from data_pipelines.loader import RankBatches
from data_pipelines.prepare import prepare
from data_pipelines.store import TokenStore
from data_pipelines.windows import StoreWindows, aligned_windows


def _make_store(root, tok, docs, **kw):
    import json

    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    prepare([str(src)], str(root / "store"), tok, progress=False, **kw)
    return str(root / "store")


@pytest.fixture(scope="module")
def docs(paragraphs):
    long_a = "\n\n".join(paragraphs[300:420])
    long_b = "\n\n".join(paragraphs[420:560])
    return paragraphs[:150] + [long_a] + paragraphs[150:300] + [long_b]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tok, docs):
    """A store of 300 short documents plus 2 long ones, in 8K-token shards."""
    return _make_store(tmp_path_factory.mktemp("win"), tok, docs, shard_tokens=8192)


def batch_hash(batch):
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(batch[key].numpy().tobytes())
    return h.hexdigest()


def test_concat_windows_cover_the_stream_with_document_ids(store, tok):
    ts = TokenStore(store)
    ws = StoreWindows(ts, seq_len=512)
    assert len(ws) == ts.num_tokens // 512
    stream = np.concatenate([ts.document(i) for i in range(ts.num_documents)])
    for i in (0, 7, len(ws) - 1):
        s = ws[i]
        assert s["input_ids"].tolist() == stream[i * 512:(i + 1) * 512].tolist()
        assert torch.equal(s["labels"], s["input_ids"])
        ids = s["document_ids"]
        assert ids[0] == 0 and (ids.diff() >= 0).all() and (ids.diff() <= 1).all()
        # A new document id starts right after every <|endoftext|> inside the window.
        eos = (s["input_ids"][:-1] == tok.eos_token_id).nonzero().flatten()
        assert (ids[eos + 1] == ids[eos] + 1).all()
        assert int(ids[-1]) == len(eos)


def test_aligned_windows_keep_short_documents_whole(store, tok):
    ts = TokenStore(store)
    ws = StoreWindows(ts, seq_len=1024, packing="aligned")
    offsets, lengths = ts.index[:, 0], ts.index[:, 1]
    starts = set(ws.starts.tolist())
    for off, ln in zip(offsets.tolist(), lengths.tolist()):
        if ln < 1024:  # a short document lies inside one window
            w = np.searchsorted(ws.starts, off, side="right") - 1
            assert ws.starts[w] <= off and off + ln <= ws.starts[w] + ws.lengths[w]
        else:  # a long one starts a window, and is cut into full windows
            assert off in starts
    assert ws.lengths.sum() == ts.num_tokens  # nothing dropped
    padded = int(np.argmin(ws.lengths))
    s = ws[padded]
    n = int(ws.lengths[padded])
    assert (s["labels"][n:] == -100).all() and (s["input_ids"][n:] == tok.pad_token_id).all()
    assert s["document_ids"][n] == s["document_ids"][n - 1] + 1


def test_aligned_packing_small_example():
    starts, sizes = aligned_windows(np.array([0, 3, 5, 15, 17]), np.array([3, 2, 10, 2, 4]), 4)
    # docs: [0,3) [3,5) [5,15) [15,17) [17,21)
    assert starts.tolist() == [0, 3, 5, 9, 13, 17]
    assert sizes.tolist() == [3, 2, 4, 4, 4, 4]


def test_exact_resume_and_resharding_on_store_windows(store):
    ws = StoreWindows(store, seq_len=256)
    straight = [batch_hash(b) for b in itertools.islice(iter(RankBatches(ws, batch_size=2, seed=11)), 10)]
    first = RankBatches(ws, batch_size=2, seed=11)
    part1 = [batch_hash(b) for b in itertools.islice(iter(first), 5)]
    second = RankBatches(ws, batch_size=2, seed=11)
    second.load_state_dict(first.state_dict())
    part2 = [batch_hash(b) for b in itertools.islice(iter(second), 5)]
    assert part1 + part2 == straight

    def global_rows(W, B, steps, start=0):
        its = [iter(RankBatches(ws, batch_size=B, rank=r, world_size=W, seed=11, start_sample=start)) for r in range(W)]
        rows = []
        for _ in range(steps):
            for it in its:
                rows.extend(hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in next(it)["input_ids"])
        return rows

    two = global_rows(2, 2, 4)
    one = global_rows(1, 4, 4)
    four = global_rows(4, 1, 4)
    assert two == one == four
    assert two[:8] + global_rows(1, 4, 2, start=8) == one  # 2 ranks -> 1 rank mid-run


def test_remote_store_reads_match_local(store, memfs):
    import os

    fs, root = memfs
    for dirpath, _, files in os.walk(store):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), store)
            fs.put_file(os.path.join(dirpath, f), f"{root}/store/{rel}")
    local, remote = StoreWindows(store, 700), StoreWindows(f"{root}/store", 700)
    for i in (0, 5, len(local) - 1):
        assert all(torch.equal(local[i][k], remote[i][k]) for k in local[i])


@pytest.mark.parametrize("strategy", ["fixed", "right_aligned", "random", "uniform", "semantic"])
def test_chunk_plans_are_valid(strategy, tok):
    rng = np.random.default_rng(0)
    boundary = rng.random(5000) < 0.02
    for length in (1, 7, 100, 2048, 4999):
        sizes = chunk_plan(length, 256, strategy, rng=np.random.default_rng(length), boundary=boundary)
        assert sizes.sum() == length and sizes.max() <= 256 and sizes.min() >= 1
    assert chunk_plan(600, 256, "fixed").tolist() == [256, 256, 88]
    assert chunk_plan(600, 256, "right_aligned").tolist() == [88, 256, 256]
    assert chunk_plan(600, 256, "uniform").tolist() == [200, 200, 200]


def test_semantic_chunks_end_after_boundary_tokens(tok):
    ids = torch.tensor(tok("\n\n".join(["word " * 30 + "end."] * 20), add_special_tokens=False)["input_ids"])
    sem = semantic_token_ids(tok)
    sizes = chunk_plan(len(ids), 64, "semantic", boundary=np.isin(ids.numpy(), sem))
    ends = np.cumsum(sizes)[:-1]
    assert all(np.isin(ids[e - 1].item(), sem) for e in ends)


def test_chunked_source_and_paper_mix_are_deterministic(tok):
    base = build_source({"kind": "passkey", "seq_len": 400, "num_samples": 50}, tok)
    a = ChunkedSource(base, chunk_size=64, strategy="paper", seed=3, tokenizer=tok)
    b = ChunkedSource(base, chunk_size=64, strategy="paper", seed=3, tokenizer=tok)
    plans = set()
    for i in range(50):
        ca, cb = a[i]["chunk_ids"], b[i]["chunk_ids"]
        assert torch.equal(ca, cb) and ca.shape == (400,) and (ca.diff() >= 0).all()
        plans.add(tuple(torch.bincount(ca).tolist()))
    assert len(plans) > 3  # several strategies were drawn
    assert a.key(0) == base.key(0)  # the wrapped source's helpers stay reachable


def test_chat_source_labels_only_answers(tok):
    convs = [[{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]
             for i in range(20)]
    src = build_source({"kind": "chat", "path": convs, "seq_len": 128}, tok)
    s = src[0]
    answer = tok.decode(s["input_ids"][s["labels"] != -100])
    assert answer.startswith("0.<|im_end|>2.<|im_end|>4.<|im_end|>")
    assert "plus" not in answer
    assert s["document_ids"].max() >= 2
    assert sum(int((src[i]["labels"] != -100).sum()) for i in range(len(src))) > 0


def test_build_source_errors_name_key_rule_and_fix(store, tok):
    with pytest.raises(DataConfigError, match="kind='passkeys' is unknown: use one of passkey, needle"):
        build_source({"kind": "passkeys", "seq_len": 128}, tok)
    with pytest.raises(DataConfigError, match="unknown key 'seqlen'. Did you mean 'seq_len'"):
        build_source({"kind": "store_windows", "path": store, "seqlen": 128}, tok)
    with pytest.raises(DataConfigError, match="depth=1.5 must be None"):
        build_source({"kind": "passkey", "seq_len": 256, "depth": 1.5}, tok)
    with pytest.raises(DataConfigError, match="chunking.strategy='chunky' is unknown"):
        build_source({"kind": "passkey", "seq_len": 256, "chunking": {"strategy": "chunky", "chunk_size": 8}}, tok)
    with pytest.raises(DataConfigError, match="is not a token store.*longctx data prepare"):
        build_source({"kind": "store_windows", "path": "/nonexistent/store", "seq_len": 128}, tok)
    with pytest.raises(DataConfigError, match=r"num_samples=99999 must be an int in \[1, "):
        build_source({"kind": "store_windows", "path": store, "seq_len": 128, "num_samples": 99999}, tok)
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    other = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(DataConfigError, match="was tokenized with 'longctx-bpe-8k'"):
        build_source({"kind": "store_windows", "path": store, "seq_len": 128},
                     PreTrainedTokenizerFast(tokenizer_object=other))
    ok = build_source({"kind": "store_windows", "path": store, "seq_len": 128, "num_samples": 10, "seed": 1}, tok)
    assert len(ok) == 10


def test_needle_task(tok):
    src = build_source({"kind": "needle", "seq_len": 2048, "num_samples": 10, "num_needles": 5, "num_queries": 2}, tok)
    prompt, answer = src.example(3)
    values = src.answer(3)
    assert answer == ", ".join(values)
    assert all(f"is: {v}." in prompt for v in values)
    s = src[3]
    assert tok.decode(s["input_ids"][s["labels"] != -100]) == answer
