"""Token store integrity: sizes checked on open, sha256s checked by `longctx data verify`, atomic rebuilds
(locally and on an S3-like memory:// store), and progress kept until an upload is complete."""

import glob
import json
import os

import pytest

import data_pipelines.prepare as prepare_mod
from data_pipelines import build_source
from data_pipelines.errors import DataConfigError, StoreIntegrityError
from data_pipelines.prepare import prepare
from data_pipelines.store import TokenStore
from data_pipelines.store_integrity import verify_store
from framework.cli import main


def expected_tokens(tok, texts):
    return [list(x) + [tok.eos_token_id] for x in tok(list(texts), add_special_tokens=False)["input_ids"]]


def docs(store):
    return [store.document(i).tolist() for i in range(store.num_documents)]


@pytest.fixture
def local_store(tmp_path, tok, paragraphs, jsonl_writer):
    src = jsonl_writer(tmp_path / "a.jsonl", [{"text": t} for t in paragraphs[:80]])
    out = str(tmp_path / "store")
    manifest = prepare([src], out, tok, shard_tokens=1024, progress=False).manifest
    assert len(manifest["shards"]) >= 4
    return src, out, manifest


@pytest.mark.parametrize("damage", ["truncated", "appended", "missing"])
def test_a_shard_of_the_wrong_size_fails_at_open_naming_the_store_and_the_fix(local_store, tok, damage):
    src, out, clean = local_store
    shard = os.path.join(out, "shards", "tokens-00001.bin")
    if damage == "truncated":  # an interrupted copy
        os.truncate(shard, os.path.getsize(shard) - 100)
    elif damage == "appended":  # two builds appending to the same shard
        with open(shard, "ab") as fh:
            fh.write(b"\x01\x00" * 50)
    else:
        os.remove(shard)
    what = "is missing" if damage == "missing" else r"has [\d,]+ bytes; the manifest says 2,048"
    with pytest.raises(StoreIntegrityError, match=rf"{out}.*shards/tokens-00001.bin {what}.*delete.*--overwrite"):
        TokenStore(out)
    with pytest.raises(DataConfigError, match="does not match its manifest"):
        build_source({"kind": "store_windows", "path": out, "seq_len": 128}, tok)
    # prepare does not call a damaged store up to date; --overwrite rebuilds it
    with pytest.raises(StoreIntegrityError, match="tokens-00001.bin"):
        prepare([src], out, tok, shard_tokens=1024, progress=False)
    rebuilt = prepare([src], out, tok, shard_tokens=1024, progress=False, overwrite=True)
    assert rebuilt.status == "built"
    assert [s["tokens_sha256"] for s in rebuilt.manifest["shards"]] == [s["tokens_sha256"] for s in clean["shards"]]
    assert verify_store(out).ok


def test_a_short_shard_on_a_remote_store_fails_at_open(memfs, tok, paragraphs):
    fs, root = memfs
    with fs.open(f"{root}/raw/a.jsonl", "wb") as fh:
        fh.write("".join(json.dumps({"text": t}) + "\n" for t in paragraphs[:60]).encode())
    out = f"{root}/tokens"
    prepare([f"{root}/raw/a.jsonl"], out, tok, shard_tokens=1024, progress=False)
    shard = f"{out}/shards/tokens-00002.bin"
    fs.pipe_file(shard, fs.cat_file(shard)[:-2])  # a truncated upload: one token short
    with pytest.raises(StoreIntegrityError, match=r"shards/tokens-00002.bin has 2,046 bytes; the manifest says 2,048"):
        TokenStore(out)


def test_verify_reports_a_flipped_byte_by_name(local_store, capsys):
    _, out, _ = local_store
    assert main(["data", "verify", "--store", out]) == 0
    text = capsys.readouterr().out
    assert "all files match" in text and "ok   shards/tokens-00003.bin" in text and "ok   index.bin" in text
    shard = os.path.join(out, "shards", "tokens-00002.bin")
    with open(shard, "r+b") as fh:
        fh.seek(777)
        byte = fh.read(1)
        fh.seek(777)
        fh.write(bytes([byte[0] ^ 0x01]))
    TokenStore(out)  # the size is right: only the sha256 finds it
    assert main(["data", "verify", "--store", out]) == 1
    captured = capsys.readouterr()
    bad = [line for line in captured.out.splitlines() if line.strip().startswith("BAD")]
    assert len(bad) == 1 and "shards/tokens-00002.bin: sha256" in bad[0]
    assert "ok   shards/tokens-00001.bin" in captured.out and "delete" in captured.err


def test_verify_a_remote_store_and_a_folder_that_is_no_store(memfs, tok, paragraphs, tmp_path, capsys):
    fs, root = memfs
    with fs.open(f"{root}/raw/a.jsonl", "wb") as fh:
        fh.write("".join(json.dumps({"text": t}) + "\n" for t in paragraphs[:40]).encode())
    out = f"{root}/tokens"
    prepare([f"{root}/raw/a.jsonl"], out, tok, shard_tokens=1024, progress=False)
    assert main(["data", "verify", "--store", out]) == 0
    index = fs.cat_file(f"{out}/index.bin")
    fs.pipe_file(f"{out}/index.bin", index[:8] + bytes([index[8] ^ 0xFF]) + index[9:])
    assert main(["data", "verify", "--store", out]) == 1
    assert "BAD  index.bin: sha256" in capsys.readouterr().out
    assert main(["data", "verify", "--store", str(tmp_path / "nowhere")]) == 2
    assert "is not a token store" in capsys.readouterr().err


class Crash(RuntimeError):
    pass


def test_an_interrupted_local_overwrite_never_leaves_a_complete_manifest(tmp_path, tok, paragraphs, jsonl_writer,
                                                                          monkeypatch):
    old = jsonl_writer(tmp_path / "old.jsonl", [{"text": t} for t in paragraphs[:200]])
    new = jsonl_writer(tmp_path / "new.jsonl", [{"text": t} for t in paragraphs[200:400]])
    out = str(tmp_path / "store")
    prepare([old], out, tok, shard_tokens=2048, progress=False)
    clean = prepare([new], str(tmp_path / "clean"), tok, shard_tokens=2048, progress=False).manifest

    def crash(progress):
        if progress["num_tokens"] > 4096:
            raise Crash("killed mid-build")

    monkeypatch.setattr(prepare_mod, "_on_checkpoint", crash)
    with pytest.raises(Crash):
        prepare([new], out, tok, shard_tokens=2048, batch_chars=4000, checkpoint_every_s=0, progress=False,
                overwrite=True)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    with pytest.raises(DataConfigError, match="is not a token store"):
        TokenStore(out)
    monkeypatch.setattr(prepare_mod, "_on_checkpoint", lambda progress: None)
    resumed = prepare([new], out, tok, shard_tokens=2048, batch_chars=4000, checkpoint_every_s=0, progress=False,
                      overwrite=True)
    assert resumed.status == "resumed"
    assert [s["tokens_sha256"] for s in resumed.manifest["shards"]] == [s["tokens_sha256"] for s in clean["shards"]]
    assert docs(TokenStore(out)) == expected_tokens(tok, paragraphs[200:400])


def test_an_interrupted_remote_overwrite_keeps_no_complete_manifest_and_resumes_the_upload(
        memfs, tok, paragraphs, tmp_path, monkeypatch):
    fs, root = memfs
    for name, texts in (("old", paragraphs[:300]), ("new", paragraphs[300:400])):
        with fs.open(f"{root}/raw/{name}.jsonl", "wb") as fh:
            fh.write("".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
    out = f"{root}/tokens"
    old = prepare([f"{root}/raw/old.jsonl"], out, tok, shard_tokens=1024, progress=False).manifest

    put_file, puts = fs.put_file, {"n": 0}

    def flaky_put(lpath, rpath, **kwargs):
        puts["n"] += 1
        if puts["n"] == 4:
            raise ConnectionError("the network went away mid-upload")
        return put_file(lpath, rpath, **kwargs)

    monkeypatch.setattr(fs, "put_file", flaky_put)
    with pytest.raises(ConnectionError):
        prepare([f"{root}/raw/new.jsonl"], out, tok, shard_tokens=1024, progress=False, overwrite=True)
    # the old manifest went before the first new shard: nothing calls this mix of shards complete
    assert not fs.exists(f"{out}/manifest.json")
    with pytest.raises(DataConfigError, match="is not a token store"):
        TokenStore(out)
    progress = glob.glob(str(tmp_path / "cache" / "prepare" / "*" / "progress.json"))
    assert len(progress) == 1  # kept until the upload is complete

    monkeypatch.setattr(fs, "put_file", put_file)
    result = prepare([f"{root}/raw/new.jsonl"], out, tok, shard_tokens=1024, progress=False, overwrite=True)
    assert result.status == "resumed"  # from the finished local build: nothing tokenized again
    assert not os.path.exists(progress[0])
    store = TokenStore(out)
    assert docs(store) == expected_tokens(tok, paragraphs[300:400])
    assert verify_store(out).ok
    # the old store's extra shards are gone; only the new store's files remain
    assert len(old["shards"]) > len(result.manifest["shards"])
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{out}/shards", detail=False)) == \
        sorted(s["tokens"].rsplit("/", 1)[1] for s in result.manifest["shards"])
