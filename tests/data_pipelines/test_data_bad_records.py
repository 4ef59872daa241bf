"""Every kind of bad record: fail with file:line: reason by default; skip and count with 'skip'."""

import gzip
import json

import pytest
import zstandard

from data_pipelines.errors import BadRecordError
from data_pipelines.prepare import prepare
from data_pipelines.store import TokenStore

GOOD = [{"text": f"Good record number {i}. It has a sentence or two."} for i in range(6)]
MANY = [{"text": f"Record {i * 7919 % 100003}: {i ** 3} is the cube of {i}."} for i in range(4000)]


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


def _truncated_gz(lines: list[bytes]) -> bytes:
    blob = gzip.compress(b"".join(lines))
    return blob[: len(blob) * 2 // 3]


def _truncated_zst(lines: list[bytes]) -> bytes:
    blob = zstandard.ZstdCompressor(level=1).compress(b"".join(lines))
    return blob[: len(blob) - 12]


def _lines(records) -> list[bytes]:
    return [(r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records]


# (file name, file bytes, line of the first bad record, reason, count when skipping, good docs kept)
CASES = {
    "malformed_json": ("a.jsonl", b"".join(_lines(GOOD[:2] + [b'{"text": "unterminated'] + GOOD[2:])), 3, 1, 6),
    "not_an_object": ("a.jsonl", b"".join(_lines(GOOD[:1] + [b'["a", "list"]'] + GOOD[1:])), 2, 1, 6),
    "missing_field": ("a.jsonl", b"".join(_lines(GOOD[:4] + [{"body": "no text field"}] + GOOD[4:])), 5, 1, 6),
    "not_text": ("a.jsonl", b"".join(_lines(GOOD[:1] + [{"text": 42}] + GOOD[1:])), 2, 1, 6),
    "not_utf8": ("a.jsonl", b"".join(_lines(GOOD[:3] + [b'{"text": "caf\xe9 latin-1"}'] + GOOD[3:])), 4, 1, 6),
    "empty_document": ("a.jsonl", b"".join(_lines(GOOD[:2] + [{"text": "  \n "}] + GOOD[2:])), 3, 1, 6),
    "truncated_gz": ("a.jsonl.gz", _truncated_gz(_lines(MANY)), None, 1, None),
    "truncated_zst": ("a.jsonl.zst", _truncated_zst(_lines(MANY)), None, 1, None),
    "empty_text_file": ("a.txt", b"\n \n", 1, 1, 0),
    "not_utf8_text_file": ("a.txt", b"line one\nline two\nbad \xff byte\n", 3, 1, 0),
}
REASON = {"not_an_object": "malformed_json", "truncated_gz": "truncated_compressed_file",
          "truncated_zst": "truncated_compressed_file", "empty_text_file": "empty_document",
          "not_utf8_text_file": "not_utf8"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_fails_with_file_line_reason(case, tmp_path, tok):
    name, blob, line, _, _ = CASES[case]
    path = tmp_path / name
    path.write_bytes(blob)
    reason = REASON.get(case, case)
    with pytest.raises(BadRecordError) as info:
        prepare([str(path)], str(tmp_path / "store"), tok, progress=False)
    err = info.value
    assert err.reason == reason and err.path == str(path)
    if line is not None:
        assert err.line == line
        assert str(err).startswith(f"{path}:{line}: {reason}")
    else:
        assert err.line > 1 and str(err).startswith(f"{path}:{err.line}: {reason}")
    assert "--on-bad-record skip" in str(err)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_is_skipped_and_counted(case, tmp_path, tok):
    name, blob, _, count, kept = CASES[case]
    path = tmp_path / name
    path.write_bytes(blob)
    reason = REASON.get(case, case)
    m = prepare([str(path)], str(tmp_path / "store"), tok, on_bad_record="skip", progress=False).manifest
    assert m["skipped"] == {reason: count}
    src = m["sources"][0]
    assert src["skipped"] == {reason: count}
    assert src["skipped_examples"][0]["reason"] == reason
    if kept is not None:
        assert m["num_documents"] == kept
    else:  # truncated: everything before the cut is kept, nothing after it is invented
        assert 0 < m["num_documents"] < len(MANY)
        assert src["records"] == m["num_documents"] + count
    if m["num_documents"]:
        store = TokenStore(str(tmp_path / "store"))
        assert store.index[:, 1].min() > 1


def test_truncated_plain_text_document_is_rolled_back(tmp_path, tok, paragraphs):
    good = "\n\n".join(paragraphs[:40]).encode()
    (tmp_path / "a.txt").write_text("A complete small document.\n")
    blob = gzip.compress("\n\n".join(paragraphs[:400]).encode())
    (tmp_path / "b.txt.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "c.txt").write_bytes(good)
    m = prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt.gz"), str(tmp_path / "c.txt")], str(tmp_path / "s"),
                tok, on_bad_record="skip", piece_chars=1000, progress=False).manifest
    assert m["num_documents"] == 2 and m["skipped"] == {"truncated_compressed_file": 1}
    store = TokenStore(str(tmp_path / "s"))
    assert tok.decode(store.document(1).tolist()) == good.decode() + "<|endoftext|>"
    assert m["num_tokens"] == int(store.index[:, 1].sum())


def test_missing_parquet_column_and_chat_records(tmp_path, tok, jsonl_writer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "a.parquet")
    with pytest.raises(BadRecordError, match=r"a\.parquet: missing_field: no column 'text'"):
        prepare([str(tmp_path / "a.parquet")], str(tmp_path / "s"), tok, progress=False)
    chats = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
             {"messages": [{"role": "user", "content": "no answer"}]},
             {"messages": "not a list"}]
    jsonl_writer(tmp_path / "c.jsonl", chats)
    m = prepare([str(tmp_path / "c.jsonl")], str(tmp_path / "c"), tok, chat=True, on_bad_record="skip",
                progress=False).manifest
    assert m["num_documents"] == 1 and m["skipped"] == {"empty_document": 1, "not_text": 1}
