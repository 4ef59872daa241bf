"""prepare -> token store: formats, compression, fsspec stores, idempotence, crash resume."""

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import data_pipelines.prepare as prepare_mod
from data_pipelines.errors import DataConfigError
from data_pipelines.prepare import prepare
from data_pipelines.store import TokenStore


def expected_tokens(tok, texts):
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    return [list(x) + [tok.eos_token_id] for x in ids]


def store_docs(path):
    store = TokenStore(path)
    return [store.document(i).tolist() for i in range(store.num_documents)]


def test_jsonl_gz_zst_parquet_text_give_the_same_tokens(tmp_path, tok, paragraphs, jsonl_writer):
    texts = paragraphs[:120]
    records = [{"id": i, "text": t} for i, t in enumerate(texts)]
    jsonl_writer(tmp_path / "a.jsonl", records[:40])
    jsonl_writer(tmp_path / "b.jsonl.gz", records[40:80], opener=gzip.open)
    with open(tmp_path / "c.jsonl.zst", "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as zst:
        for r in records[80:100]:
            zst.write(json.dumps(r).encode() + b"\n")
    pq.write_table(pa.table({"text": texts[100:119], "n": list(range(19))}), tmp_path / "d.parquet", row_group_size=7)
    (tmp_path / "e.txt").write_text(texts[119], encoding="utf-8")
    result = prepare([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz"), str(tmp_path / "c.jsonl.zst"),
                      str(tmp_path / "d.parquet"), str(tmp_path / "e.txt")], str(tmp_path / "store"), tok, progress=False)
    assert result.status == "built"
    m = result.manifest
    assert store_docs(tmp_path / "store") == expected_tokens(tok, texts)
    assert [s["documents"] for s in m["sources"]] == [40, 40, 20, 19, 1]
    assert [s["compression"] for s in m["sources"]] == [None, "gzip", "zstd", None, None]
    store = TokenStore(str(tmp_path / "store"))
    assert store.index[:, 2].tolist() == [0] * 40 + [1] * 40 + [2] * 20 + [3] * 19 + [4]
    assert m["num_tokens"] == int(store.index[-1, 0] + store.index[-1, 1])
    with open(tmp_path / "b.jsonl.gz", "rb") as fh:
        import hashlib

        assert m["sources"][1]["sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert m["tokenizer"]["name_or_path"] == "longctx-bpe-8k" and len(m["tokenizer"]["fingerprint"]) == 64


def test_documents_span_fixed_size_shards(tmp_path, tok, paragraphs, jsonl_writer):
    texts = paragraphs[:60]
    jsonl_writer(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    m = prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "s"), tok, shard_tokens=1024, progress=False).manifest
    assert len(m["shards"]) == -(-m["num_tokens"] // 1024) > 2
    assert all(s["num_tokens"] == 1024 for s in m["shards"][:-1])
    assert all(os.path.getsize(tmp_path / "s" / s["tokens"]) == 2 * s["num_tokens"] for s in m["shards"])
    assert store_docs(tmp_path / "s") == expected_tokens(tok, texts)


def test_s3_like_memory_store_in_and_out(memfs, tok, paragraphs):
    fs, root = memfs
    texts = paragraphs[:50]
    with fs.open(f"{root}/raw/part-0.jsonl", "wb") as fh:
        fh.write("".join(json.dumps({"text": t}) + "\n" for t in texts[:30]).encode())
    with fs.open(f"{root}/raw/part-1.jsonl.gz", "wb") as fh:
        fh.write(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts[30:]).encode()))
    out = f"{root}/tokens/v1"
    result = prepare([f"{root}/raw/*.jsonl*"], out, tok, progress=False)
    assert result.status == "built"
    assert fs.exists(f"{out}/manifest.json") and fs.exists(f"{out}/index.bin")
    store = TokenStore(out)
    assert not store._local
    assert [store.document(i).tolist() for i in range(store.num_documents)] == expected_tokens(tok, texts)
    assert prepare([f"{root}/raw/*.jsonl*"], out, tok, progress=False).status == "up_to_date"


def test_rerun_is_a_no_op_and_changed_inputs_are_refused(tmp_path, tok, paragraphs, jsonl_writer):
    src = jsonl_writer(tmp_path / "a.jsonl", [{"text": t} for t in paragraphs[:30]])
    out = str(tmp_path / "store")
    first = prepare([src], out, tok, progress=False)
    stamp = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in ("manifest.json", "index.bin", "shards/tokens-00000.bin")}
    assert prepare([src], out, tok, progress=False).status == "up_to_date"
    os.utime(src, ns=(1, 1))  # a touch: new file key, same content -> still nothing to do
    assert prepare([src], out, tok, progress=False).status == "up_to_date"
    assert stamp == {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in stamp}
    jsonl_writer(tmp_path / "a.jsonl", [{"text": t} for t in paragraphs[:31]])
    with pytest.raises(DataConfigError, match="other inputs.*--overwrite"):
        prepare([src], out, tok, progress=False)
    with pytest.raises(DataConfigError, match="parameters differ: append_eos"):
        prepare([src], out, tok, append_eos=False, progress=False)
    rebuilt = prepare([src], out, tok, progress=False, overwrite=True)
    assert rebuilt.status == "built" and rebuilt.manifest["num_documents"] == first.manifest["num_documents"] + 1


def test_resume_after_a_crash_gives_the_same_store(tmp_path, tok, paragraphs, jsonl_writer, monkeypatch):
    srcs = [jsonl_writer(tmp_path / f"{k}.jsonl", [{"text": t} for t in paragraphs[k * 100:(k + 1) * 100]]) for k in range(3)]
    clean = prepare(srcs, str(tmp_path / "clean"), tok, shard_tokens=4096, batch_chars=4000, progress=False).manifest

    calls = {"n": 0}

    class Crash(RuntimeError):
        pass

    def crash_on_third(progress):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash(f"simulated crash at {progress['num_tokens']} tokens")

    monkeypatch.setattr(prepare_mod, "_on_checkpoint", crash_on_third)
    out = str(tmp_path / "crashy")
    with pytest.raises(Crash):
        prepare(srcs, out, tok, shard_tokens=4096, batch_chars=4000, checkpoint_every_s=0, progress=False)
    progress = json.load(open(os.path.join(out, "progress.json")))
    assert 0 < progress["num_tokens"] < clean["num_tokens"] and not os.path.exists(os.path.join(out, "manifest.json"))
    # Garbage written after the checkpoint (as a crash mid-batch would leave) must be cut away.
    with open(os.path.join(out, "shards", "tokens-00000.bin"), "ab") as fh:
        fh.write(b"\xff\xff" * 10)
    monkeypatch.setattr(prepare_mod, "_on_checkpoint", lambda progress: None)
    resumed = prepare(srcs, out, tok, shard_tokens=4096, batch_chars=4000, checkpoint_every_s=0, progress=False)
    assert resumed.status == "resumed"
    m = resumed.manifest
    assert [s["tokens_sha256"] for s in m["shards"]] == [s["tokens_sha256"] for s in clean["shards"]]
    assert m["index_sha256"] == clean["index_sha256"]
    assert [(s["records"], s["documents"], s["sha256"]) for s in m["sources"]] == \
        [(s["records"], s["documents"], s["sha256"]) for s in clean["sources"]]


def test_long_text_documents_stream_in_pieces_with_identical_tokens(tmp_path, tok, paragraphs):
    text = "\n\n".join(paragraphs[:300])
    (tmp_path / "book.txt.gz").write_bytes(gzip.compress(text.encode()))
    m = prepare([str(tmp_path / "book.txt.gz")], str(tmp_path / "s"), tok, piece_chars=2000, progress=False).manifest
    assert m["num_documents"] == 1
    assert store_docs(tmp_path / "s") == expected_tokens(tok, [text])


def test_saved_hf_dataset_folder_is_a_source(tmp_path, tok, paragraphs):
    import datasets

    datasets.Dataset.from_dict({"body": paragraphs[:25]}).save_to_disk(str(tmp_path / "hf"))
    m = prepare([str(tmp_path / "hf")], str(tmp_path / "s"), tok, field="body", progress=False).manifest
    assert m["sources"][0]["uri"].startswith("datasets:") and m["sources"][0]["sha256"]
    assert store_docs(tmp_path / "s") == expected_tokens(tok, paragraphs[:25])


def test_source_errors_name_the_fix(tmp_path, tok):
    with pytest.raises(DataConfigError, match="does not exist"):
        prepare([str(tmp_path / "missing.jsonl")], str(tmp_path / "s"), tok, progress=False)
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataConfigError, match="cannot tell the format.*--format"):
        prepare([str(tmp_path / "notes.csv")], str(tmp_path / "s"), tok, progress=False)
    with pytest.raises(DataConfigError, match="on_bad_record='ignore' is unknown"):
        prepare([str(tmp_path / "notes.csv")], str(tmp_path / "s"), tok, on_bad_record="ignore", progress=False)


def test_http_source(tmp_path, tok, paragraphs):
    import functools
    import http.server
    import threading

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n"
                                                                        for t in paragraphs[:12]).encode()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.jsonl.gz"
        m = prepare([url], str(tmp_path / "s"), tok, progress=False).manifest
    finally:
        server.shutdown()
    assert m["sources"][0]["uri"] == url
    assert store_docs(tmp_path / "s") == expected_tokens(tok, paragraphs[:12])


def test_data_pipelines_imports_no_training_stack():
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, data_pipelines\n"
            "for m in pkgutil.walk_packages(data_pipelines.__path__, 'data_pipelines.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('framework', 'lightning', 'pytorch_lightning', 'ray'))\n"
            "print(bad)\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
