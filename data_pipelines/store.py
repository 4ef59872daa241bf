"""The token store: fixed-size token shards, a document index and a manifest.

Layout of a store folder::

    manifest.json            what was built from what (see ``prepare.py``); "complete": true when done
    index.bin                int64 triples (offset, length, source_id) per document, little-endian
    shards/tokens-00000.bin  raw token ids (uint16 when the vocabulary fits, else uint32),
    shards/tokens-00001.bin  ``shard_tokens`` per shard except the last; documents may span shards
    shards/mask-00000.bin    (chat stores only) uint8 per token: 1 where the token carries loss
    progress.json            only while building: the checkpoint a crashed build resumes from
    prepare.lock             the lock that lets one process at a time build into the folder

Offsets are global token positions, so a document is read by ``(offset, length)`` whatever
the shard size. A store can live on any fsspec filesystem; local shards are memory-mapped,
remote ones are read by byte ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from data_pipelines.errors import DataConfigError
from data_pipelines.store_integrity import check_sizes

MANIFEST = "manifest.json"
INDEX = "index.bin"
PROGRESS = "progress.json"
LOCK = "prepare.lock"
STORE_FORMAT = "longctx-token-store"
STORE_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(kind: str, i: int) -> str:
    return f"shards/{kind}-{i:05d}.bin"


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class StoreWriter:
    """Appends documents to a local store folder; can truncate back to any earlier point."""

    def __init__(self, root: Path, dtype: np.dtype, shard_tokens: int, with_mask: bool = False):
        self.root, self.dtype, self.shard_tokens, self.with_mask = Path(root), np.dtype(dtype), int(shard_tokens), with_mask
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self.num_tokens = 0
        self.num_documents = 0
        self._doc_start = 0
        self._index_pending: list[tuple[int, int, int]] = []
        self._files: dict[str, Any] = {}

    # -- positioning -------------------------------------------------------------------------
    def truncate(self, num_tokens: int, num_documents: int) -> None:
        """Drop everything after ``num_tokens`` tokens and ``num_documents`` documents."""
        self.flush()
        self._close_files()
        keep_shards = -(-num_tokens // self.shard_tokens)  # ceil
        for kind in ("tokens", "mask"):
            i = keep_shards
            while (self.root / shard_name(kind, i)).exists():
                (self.root / shard_name(kind, i)).unlink()
                i += 1
            if num_tokens % self.shard_tokens:
                last = self.root / shard_name(kind, keep_shards - 1)
                if last.exists():
                    width = self.dtype.itemsize if kind == "tokens" else 1
                    os.truncate(last, (num_tokens % self.shard_tokens) * width)
        index = self.root / INDEX
        if index.exists():
            os.truncate(index, num_documents * 24)
        else:
            index.touch()
        self.num_tokens, self.num_documents, self._doc_start = num_tokens, num_documents, num_tokens

    # -- appending ---------------------------------------------------------------------------
    def _file(self, kind: str, shard: int):
        key = f"{kind}-{shard}"
        fh = self._files.get(key)
        if fh is None:
            for old in list(self._files):
                if old.startswith(kind + "-"):
                    self._files.pop(old).close()
            fh = self._files[key] = open(self.root / shard_name(kind, shard), "ab")
        return fh

    def append(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append tokens (and their loss mask, for chat stores) to the current document."""
        tokens = np.asarray(tokens).astype(self.dtype, copy=False)
        if self.with_mask:
            mask = np.ones(tokens.size, np.uint8) if mask is None else np.asarray(mask).astype(np.uint8, copy=False)
        pos = 0
        while pos < tokens.size:
            shard, within = divmod(self.num_tokens, self.shard_tokens)
            take = min(tokens.size - pos, self.shard_tokens - within)
            self._file("tokens", shard).write(tokens[pos:pos + take].tobytes())
            if self.with_mask:
                self._file("mask", shard).write(mask[pos:pos + take].tobytes())
            pos += take
            self.num_tokens += take

    def end_document(self, source_id: int) -> None:
        self._index_pending.append((self._doc_start, self.num_tokens - self._doc_start, source_id))
        self.num_documents += 1
        self._doc_start = self.num_tokens

    @property
    def document_start(self) -> int:
        return self._doc_start

    def rollback_document(self) -> None:
        """Forget the tokens of the document in progress."""
        self.truncate(self._doc_start, self.num_documents)

    def flush(self) -> None:
        if self._index_pending:
            with open(self.root / INDEX, "ab") as fh:
                fh.write(np.asarray(self._index_pending, dtype="<i8").tobytes())
            self._index_pending.clear()
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())

    def _close_files(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    def close(self) -> list[dict]:
        """Flush, close, and describe the shards: ``num_tokens``, files ``tokens`` (and ``mask``), their sha256."""
        self.flush()
        self._close_files()
        shards = []
        num_shards = -(-self.num_tokens // self.shard_tokens)
        for i in range(num_shards):
            entry = {"num_tokens": min(self.shard_tokens, self.num_tokens - i * self.shard_tokens)}
            for kind in ("tokens", "mask") if self.with_mask else ("tokens",):
                entry[kind] = shard_name(kind, i)
                entry[f"{kind}_sha256"] = file_sha256(self.root / shard_name(kind, i))
            shards.append(entry)
        return shards


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def read_manifest(fs, root: str, path: str) -> dict:
    """The manifest of the finished store at ``root``; a clear error when there is none, or it is unfinished."""
    manifest_path = f"{root}/{MANIFEST}"
    if not fs.exists(manifest_path):
        raise DataConfigError(
            f"{path!r} is not a token store: it has no {MANIFEST}. Build one with "
            f"`longctx data prepare SOURCE... --out {path}` (a build that was interrupted resumes when rerun)."
        )
    try:
        with fs.open(manifest_path, "r") as fh:
            manifest = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataConfigError(f"{path!r}: {MANIFEST} is not valid JSON ({exc}). Delete {path!r} and run "
                              "`longctx data prepare` again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT or not manifest.get("complete"):
        complete = manifest.get("complete") if isinstance(manifest, dict) else None
        raise DataConfigError(
            f"{path!r} holds an unfinished or foreign store (complete={complete!r}): "
            "rerun `longctx data prepare` with the same arguments to finish it."
        )
    return manifest


class TokenStore:
    """Read access to a finished store on any fsspec filesystem; its files' sizes are checked on open."""

    def __init__(self, path: str, storage_options: dict | None = None):
        self.path = str(path).rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self._root = fsspec.core.url_to_fs(self.path, **self.storage_options)
        self.manifest: dict = read_manifest(self.fs, self._root, self.path)
        check_sizes(self.fs, self._root, self.manifest, self.path)  # a damaged store fails here, not mid-training
        self.dtype = np.dtype(self.manifest["dtype"])
        self.shard_tokens = int(self.manifest["shard_tokens"])
        self.num_tokens = int(self.manifest["num_tokens"])
        self.has_mask = bool(self.manifest.get("has_loss_mask"))
        self._index: np.ndarray | None = None
        self._maps: dict[str, np.ndarray] = {}
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps reopen lazily in each process
        return state

    @property
    def index(self) -> np.ndarray:
        """``[num_documents, 3]`` int64: offset, length, source id."""
        if self._index is None:
            raw = self.fs.cat_file(f"{self._root}/{INDEX}")
            self._index = np.frombuffer(raw, dtype="<i8").reshape(-1, 3)
        return self._index

    @property
    def num_documents(self) -> int:
        return int(self.manifest["num_documents"])

    def _shard(self, kind: str, i: int) -> np.ndarray | None:
        key = f"{kind}-{i}"
        arr = self._maps.get(key)
        if arr is None and self._local:
            dtype = self.dtype if kind == "tokens" else np.uint8
            arr = self._maps[key] = np.memmap(f"{self._root}/{shard_name(kind, i)}", dtype=dtype, mode="r")
        return arr

    def _read(self, kind: str, start: int, length: int) -> np.ndarray:
        dtype = self.dtype if kind == "tokens" else np.dtype(np.uint8)
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"token range [{start}, {start + length}) is outside the store's {self.num_tokens} tokens")
        out = np.empty(length, dtype=dtype)
        pos = 0
        while pos < length:
            shard, within = divmod(start + pos, self.shard_tokens)
            take = min(length - pos, self.shard_tokens - within)
            mapped = self._shard(kind, shard)
            if mapped is not None:
                out[pos:pos + take] = mapped[within:within + take]
            else:
                raw = self.fs.cat_file(f"{self._root}/{shard_name(kind, shard)}",
                                       start=within * dtype.itemsize, end=(within + take) * dtype.itemsize)
                out[pos:pos + take] = np.frombuffer(raw, dtype=dtype)
            pos += take
        return out

    def tokens(self, start: int, length: int) -> np.ndarray:
        return self._read("tokens", start, length)

    def loss_mask(self, start: int, length: int) -> np.ndarray:
        if not self.has_mask:
            return np.ones(length, dtype=np.uint8)
        return self._read("mask", start, length)

    def document(self, i: int) -> np.ndarray:
        offset, length, _ = self.index[i]
        return self.tokens(int(offset), int(length))
