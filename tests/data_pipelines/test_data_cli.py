"""``longctx data prepare`` / ``longctx data inspect`` through the real command line entry point."""

import json

from framework.cli import main


def test_prepare_then_inspect(tmp_path, paragraphs, jsonl_writer, capsys):
    src = jsonl_writer(tmp_path / "a.jsonl", [{"body": p} for p in paragraphs[:40]] + [{"body": ""}])
    out = str(tmp_path / "store")
    assert main(["data", "prepare", src, "--out", out, "--field", "body", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{src}:41: empty_document" in err and "--on-bad-record skip" in err

    assert main(["data", "prepare", src, "--out", out, "--field", "body", "--on-bad-record", "skip", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "built 40 documents" in text and "skipped records: empty_document=1" in text
    assert main(["data", "prepare", src, "--out", out, "--field", "body", "--on-bad-record", "skip", "--no-progress"]) == 0
    assert "up to date" in capsys.readouterr().out

    assert main(["data", "inspect", out, "--json", "--samples", "2", "--seq-len", "64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 40 and info["skipped"] == {"empty_document": 1}
    assert len(info["samples"]) == 2 and paragraphs[0][:20] in info["samples"][0]["text"]
    assert main(["data", "inspect", out]) == 0
    human = capsys.readouterr().out
    assert "documents   40" in human and "skipped     empty_document=1" in human


def test_inspect_a_missing_store_explains(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "longctx data prepare" in capsys.readouterr().err
