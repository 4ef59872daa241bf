"""Shared fixtures for the data pipeline tests: the project tokenizer, a small real corpus,
an isolated cache folder, and a clean fsspec memory filesystem (our S3-like store)."""

import json
import os
import uuid

import fsspec
import pytest

from data_pipelines.corpus import shipped_documents
from data_pipelines.tokenizer import load_project_tokenizer


@pytest.fixture(scope="session")
def tok():
    return load_project_tokenizer()


@pytest.fixture(scope="session")
def paragraphs():
    """About 600 real paragraphs from the shipped novels (~60K tokens): small but natural."""
    paras = [p for p in shipped_documents()[2]["text"].split("\n\n") if len(p) > 40]
    return paras[:600]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def memfs():
    """A fresh bucket on fsspec's in-memory filesystem, as an S3 stand-in."""
    fs = fsspec.filesystem("memory")
    bucket = f"/bucket-{uuid.uuid4().hex[:8]}"
    fs.makedirs(bucket, exist_ok=True)
    yield fs, f"memory://{bucket}"
    fs.rm(bucket, recursive=True)


def write_jsonl(path, records, opener=open):
    """Write records (dicts are JSON-encoded, bytes are written as they are), one per line."""
    with opener(path, "wb") as fh:
        for r in records:
            fh.write(r if isinstance(r, bytes) else json.dumps(r).encode())
            fh.write(b"\n")
    return str(path)


@pytest.fixture
def jsonl_writer():
    return write_jsonl


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
