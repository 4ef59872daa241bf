"""Natural text shipped with the package, and its tokenized form for synthetic-task filler.

The text is Jane Austen's six novels (public domain); see ``assets/text/README.md``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
AUSTEN_PATH = ASSETS_DIR / "text" / "austen.jsonl.gz"


def shipped_corpus_path() -> str:
    """Path of the shipped corpus: gzipped JSON Lines, one ``{"title", "text"}`` record per novel."""
    return str(AUSTEN_PATH)


@lru_cache(maxsize=1)
def shipped_documents() -> tuple[dict, ...]:
    """The shipped novels as ``({"title": str, "text": str}, ...)``, in a fixed order."""
    with gzip.open(AUSTEN_PATH, "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh)


def shipped_text(separator: str = "\n\n") -> str:
    return separator.join(doc["text"] for doc in shipped_documents())


def tokenizer_fingerprint(tokenizer) -> str:
    """A content hash of a Hugging Face fast tokenizer (its serialised ``tokenizer.json``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else repr(tokenizer)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_FILLER_CACHE: dict[str, np.ndarray] = {}
_FILLER_LOCK = threading.Lock()


def filler_tokens(tokenizer) -> np.ndarray:
    """The shipped novels tokenized with ``tokenizer``, concatenated: a read-only int32 array.

    Computed once per process and tokenizer (about a second), then shared. Novels are
    joined by a blank line, so the array can be used cyclically as an endless text stream.
    """
    key = tokenizer_fingerprint(tokenizer)
    with _FILLER_LOCK:
        cached = _FILLER_CACHE.get(key)
        if cached is not None:
            return cached
        pieces = []
        for doc in shipped_documents():
            paragraphs = [p + "\n\n" for p in doc["text"].split("\n\n") if p]
            encoded = tokenizer(paragraphs, add_special_tokens=False)["input_ids"]
            pieces.extend(np.asarray(ids, dtype=np.int32) for ids in encoded)
        arr = np.concatenate(pieces)
        arr.setflags(write=False)
        _FILLER_CACHE[key] = arr
        return arr
