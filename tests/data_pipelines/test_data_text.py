"""The `text` data kind: natural-text windows with a held-out split, from the shipped novels or any file."""

import gzip
import json

import pytest
import torch

from data_pipelines import BadRecordError, DataConfigError, build_source
from data_pipelines.tokenizer import load_project_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_project_tokenizer()


def test_shipped_novels_split_into_disjoint_train_and_validation_windows(tok):
    train = build_source({"kind": "text", "seq_len": 512}, tok)
    val = build_source({"kind": "text", "seq_len": 512, "split": "validation"}, tok)
    assert len(train) > 1500 and 60 < len(val) < len(train) / 10
    assert int(train.starts[-1]) + 512 <= int(val.starts[0])  # no token of validation is trained on
    x = train[3]
    assert x["input_ids"].shape == (512,) and torch.equal(x["labels"], x["input_ids"])
    assert torch.equal(x["input_ids"], torch.from_numpy(train.tokens[3 * 512:4 * 512].astype("int64")))


def test_documents_end_with_end_of_text_and_number_the_document_ids(tok, tmp_path):
    texts = ["one two three", "four five", "six seven eight"]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": t}) for t in texts))
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    src = build_source({"kind": "text", "seq_len": sum(lengths), "path": str(path), "field": "body", "split": "all"},
                       tok)
    assert len(src) == 1
    x = src[0]
    ends = (x["input_ids"] == tok.eos_token_id).nonzero().flatten().tolist()
    assert ends == [lengths[0] - 1, lengths[0] + lengths[1] - 1, sum(lengths) - 1]
    expected = [d for d, n in enumerate(lengths) for _ in range(n)]
    assert x["document_ids"].tolist() == expected
    assert tok.decode(x["input_ids"][:lengths[0] - 1]) == texts[0]


def test_any_fsspec_file_and_format_is_read(tok):
    import fsspec

    with fsspec.open("memory://texts/a.jsonl.gz", "wb") as fh:
        fh.write(gzip.compress(b'{"text": "' + b"word " * 400 + b'"}\n'))
    src = build_source({"kind": "text", "seq_len": 64, "path": "memory://texts/a.jsonl.gz", "split": "all"}, tok)
    assert len(src) >= 5 and "word" in tok.decode(src[0]["input_ids"])


def test_bad_input_names_the_cause(tok, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(BadRecordError, match="bad.jsonl:2: malformed_json"):
        build_source({"kind": "text", "seq_len": 4, "path": str(bad)}, tok)
    with pytest.raises(DataConfigError, match="split='test' is unknown"):
        build_source({"kind": "text", "seq_len": 64, "split": "test"}, tok)
    with pytest.raises(DataConfigError, match="not one window of seq_len"):
        build_source({"kind": "text", "seq_len": 10_000_000}, tok)
    with pytest.raises(DataConfigError, match="unknown key 'pth'"):
        build_source({"kind": "text", "seq_len": 64, "pth": "x"}, tok)
