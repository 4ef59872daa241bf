"""Several ranks building the same chat store at once (real processes, real files) build it once, correctly."""

import json
import multiprocessing as mp
import os
import queue

import parallel_build_worker as worker

from data_pipelines import build_source
from data_pipelines.store import TokenStore
from data_pipelines.store_integrity import verify_store

RANKS = 3


def _conversations(paragraphs):
    """About 1,800 real conversations (~350K tokens): a build of about a second, long enough for ranks to overlap."""
    n = len(paragraphs)
    return [{"messages": [{"role": "user", "content": paragraphs[i]},
                          {"role": "assistant", "content": paragraphs[(i + 1 + k) % n]}]}
            for k in range(6) for i in range(0, n, 2)]


def test_ranks_building_one_chat_store_at_once_build_it_once(tmp_path, tok, paragraphs, monkeypatch):
    src = tmp_path / "chats.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in _conversations(paragraphs)), encoding="utf-8")
    monkeypatch.setenv("LONGCTX_CACHE", str(tmp_path / "single"))
    single = build_source({"kind": "chat", "path": str(src), "seq_len": 512}, tok)
    expected = worker.sample_digest(single)

    shared = tmp_path / "node-cache"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(RANKS), ctx.Queue()
    procs = [ctx.Process(target=worker.build_chat, args=(r, str(src), str(shared), 512, barrier, results))
             for r in range(RANKS)]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in range(RANKS):
            rank, info = results.get(timeout=300)
            got[rank] = info
    except queue.Empty:
        raise AssertionError(f"only ranks {sorted(got)} reported within 300 s") from None
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    errors = [info["error"] for info in got.values() if "error" in info]
    assert not errors, errors[0]

    stores = {info["store"] for info in got.values()}
    assert len(stores) == 1 and os.listdir(shared / "chat-stores") == [os.path.basename(stores.pop())]
    store_path = got[0]["store"]
    # exactly one rank built; the others waited for its manifest and found the store up to date
    waited = [r for r, info in got.items() if any("up to date" in m for m in info["logs"])]
    assert len(waited) == RANKS - 1, {r: info["logs"] for r, info in got.items()}
    assert all(info["digest"] == expected for info in got.values())
    assert verify_store(store_path).ok
    built, reference = TokenStore(store_path).manifest, single.store.manifest
    for key in ("num_tokens", "num_documents", "index_sha256", "shards"):
        assert built[key] == reference[key], key
    assert not (shared / "chat-stores" / os.path.basename(store_path) / "progress.json").exists()
