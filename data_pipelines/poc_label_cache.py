"""The cache of PoC's training labels: contexts as a token store, their measured retention beside them.

PoC's predictor learns (context, ratio) -> retention from labels that cost a compressor run and a
reader run per (context, ratio); the cache keeps them so they are never measured twice. Layout::

    manifest.json           a token-store manifest ("complete": true once everything is written)
                            plus "poc_labels": the cache key and what it was measured with
    index.bin, shards/      the contexts' token ids, one document per context (data_pipelines.store)
    labels.safetensors      "retention" float32 [documents, ratios], "scores" float32
                            [documents, 1 + compressed settings] (column 0: the uncompressed reading)

    cache = open_cache("outputs/poc/labels", key)      # None unless complete and of this key
    write_cache(path, key, contexts, scores, retention, ratios, info, tokenizer)
    PoCLabels(path, seq_len=512, split="validation")   # the ``poc_labels`` data kind

The manifest is written last (atomically on a local disk; last on a remote fsspec store), so a
cache missing it, marked incomplete, or holding another key is never read as labels.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import fsspec
import numpy as np
import torch

from data_pipelines.errors import DataConfigError, require
from data_pipelines.store import (INDEX, MANIFEST, STORE_FORMAT, STORE_VERSION, StoreWriter, TokenStore,
                                  file_sha256, token_dtype, write_json_atomic)

LABELS = "labels.safetensors"
LABELS_FORMAT = "longctx-poc-labels"
SPLITS = ("train", "validation", "all")
CACHE_ENTRIES = {MANIFEST, MANIFEST + ".tmp", INDEX, "shards", LABELS}  # what a rebuild may replace


def cache_key(payload: dict) -> str:
    """A content hash of what the labels depend on (compressor, ratios, data, score, tokenizer)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fs(path: str, storage_options: dict | None = None):
    return fsspec.core.url_to_fs(str(path).rstrip("/"), **(storage_options or {}))


def cache_state(path: str, key: str | None = None, storage_options: dict | None = None) -> str:
    """missing | incomplete | other_key | complete: what the folder at ``path`` holds."""
    fs, root = _fs(path, storage_options)
    manifest_path = f"{root}/{MANIFEST}"
    if not fs.exists(manifest_path):
        return "incomplete" if fs.exists(root) and fs.ls(root) else "missing"
    try:
        with fs.open(manifest_path, "r") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return "incomplete"
    info = manifest.get("poc_labels") or {}
    if not manifest.get("complete") or info.get("format") != LABELS_FORMAT or not fs.exists(f"{root}/{LABELS}"):
        return "incomplete"
    if key is not None and info.get("key") != key:
        return "other_key"
    return "complete"


class LabelCache:
    """A complete label cache: ``ratios`` [R], ``retention`` [N, R], ``scores`` [N, 1 + S], the contexts."""

    def __init__(self, path: str, storage_options: dict | None = None):
        from safetensors.numpy import load

        self.path = str(path).rstrip("/")
        if cache_state(self.path, storage_options=storage_options) != "complete":
            raise DataConfigError(f"{self.path!r} is not a complete PoC label cache (no complete manifest.json with "
                                  f"poc_labels, or no {LABELS}). Fix: generate it with recipes/poc_predictor.py, "
                                  "which resumes or rebuilds an unfinished one")
        self.store = TokenStore(self.path, storage_options)
        self.manifest = self.store.manifest
        self.info = self.manifest["poc_labels"]
        fs, root = _fs(self.path, storage_options)
        arrays = load(fs.cat_file(f"{root}/{LABELS}"))
        self.retention, self.scores = arrays["retention"], arrays["scores"]
        self.ratios = np.asarray(self.info["ratios"], dtype=np.float64)
        require(self.retention.shape == (self.store.num_documents, self.ratios.size),
                f"{self.path!r}: {LABELS} holds retention {self.retention.shape}, but the store has "
                f"{self.store.num_documents} contexts and {self.ratios.size} ratios. Fix: delete the cache and generate it again")

    @property
    def key(self) -> str:
        return self.info["key"]

    def __len__(self) -> int:
        return self.store.num_documents

    def context(self, i: int) -> np.ndarray:
        return self.store.document(i).astype(np.int64)


def open_cache(path: str, key: str, storage_options: dict | None = None) -> LabelCache | None:
    """The cache at ``path`` when it is complete and of ``key``, else None (it must be generated)."""
    if cache_state(path, key, storage_options) != "complete":
        return None
    return LabelCache(path, storage_options)


def check_replaceable(path: str, storage_options: dict | None = None) -> None:
    """Raise unless the folder at ``path`` is absent, empty, or holds only a label cache's files (a
    rebuild replaces the whole folder, so it must never hold anything else)."""
    fs, root = _fs(path, storage_options)
    if not fs.exists(root):
        return
    foreign = sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)} - CACHE_ENTRIES)
    require(not foreign, f"{path!r} holds files that are not a PoC label cache ({foreign[:4]}), and a rebuild "
                         "replaces the whole folder. Fix: point the label cache at an empty or new folder, "
                         "e.g. outputs/poc/labels")


def write_cache(path: str, key: str, contexts: Sequence[np.ndarray], scores: np.ndarray, retention: np.ndarray,
                ratios: Sequence[float], info: dict, tokenizer, storage_options: dict | None = None) -> LabelCache:
    """Write a complete cache at ``path`` (a local folder or an fsspec URL), replacing what is there.

    The folder is built locally (in place for a local path, else in a temporary folder that is then
    uploaded), and the manifest goes last, so an interrupted write leaves no usable cache."""
    from safetensors.numpy import save_file

    from data_pipelines.corpus import tokenizer_fingerprint

    # C order: safetensors writes the array's memory as it lies (a column-major array would come back transposed)
    scores, retention = np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(retention, np.float32)
    require(len(contexts) == retention.shape[0] == scores.shape[0] and retention.shape[1] == len(ratios),
            f"{len(contexts)} contexts, retention {retention.shape}, scores {scores.shape} and {len(ratios)} ratios "
            "do not line up: one row per context, one retention column per ratio")
    fs, root = _fs(path, storage_options)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    check_replaceable(path, storage_options)
    build = Path(root) if local else Path(tempfile.mkdtemp(prefix="longctx-poc-labels-"))
    if build.exists():
        shutil.rmtree(build)  # an incomplete cache or one of another key: rebuilt, never mixed
    build.mkdir(parents=True)
    vocab = len(tokenizer)
    writer = StoreWriter(build, token_dtype(vocab), shard_tokens=1 << 20)
    writer.truncate(0, 0)
    for i, ids in enumerate(contexts):
        writer.append(np.asarray(ids))
        writer.end_document(0)
    shards = writer.close()
    save_file({"retention": retention, "scores": scores}, str(build / LABELS))
    manifest = {
        "format": STORE_FORMAT, "version": STORE_VERSION, "complete": True,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": {"name_or_path": getattr(tokenizer, "name_or_path", "?"),
                      "fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": vocab},
        "dtype": token_dtype(vocab).str, "shard_tokens": 1 << 20, "has_loss_mask": False,
        "num_tokens": writer.num_tokens, "num_documents": writer.num_documents,
        "index": INDEX, "index_sha256": file_sha256(build / INDEX), "shards": shards,
        "poc_labels": {"format": LABELS_FORMAT, "key": key, "ratios": [float(r) for r in ratios],
                       "labels": LABELS, "labels_sha256": file_sha256(build / LABELS), **info},
    }
    if local:
        write_json_atomic(build / MANIFEST, manifest)
    else:
        if fs.exists(root):
            fs.rm(root, recursive=True)
        for file in sorted(p for p in build.rglob("*") if p.is_file()):
            fs.put_file(str(file), f"{root}/{file.relative_to(build).as_posix()}")
        with fs.open(f"{root}/{MANIFEST}", "w") as fh:
            json.dump(manifest, fh, indent=2)
        shutil.rmtree(build, ignore_errors=True)
    return LabelCache(path, storage_options)


def split_indices(n: int, split: str, validation_fraction: float) -> np.ndarray:
    """Contexts of a split: the last ``validation_fraction`` of them (at least one) are validation."""
    require(split in SPLITS, f"split={split!r} is not one of {SPLITS}. Pass e.g. split='train'.")
    require(0.0 < validation_fraction < 1.0,
            f"validation_fraction={validation_fraction!r} must lie strictly between 0 and 1, e.g. 0.1.")
    held = max(1, int(round(n * validation_fraction)))
    require(n > held, f"the cache holds {n} contexts: too few to hold out {held} and still train. "
                      "Generate labels for more contexts")
    cut = n - held
    return {"train": np.arange(cut), "validation": np.arange(cut, n), "all": np.arange(n)}[split]


class PoCLabels:
    """Map-style source of one split of a label cache (data kind ``poc_labels``).

    ``src[i]`` -> ``input_ids`` / ``attention_mask`` [seq_len] (the context, right-padded),
    ``ratios`` / ``retention`` [R] float32 (the measured retention at every cached ratio)."""

    def __init__(self, path: str, seq_len: int, split: str = "train", validation_fraction: float = 0.1,
                 num_samples: int | None = None, seed: int = 0, storage_options: dict | None = None,
                 pad_token_id: int = 0):
        self.cache = LabelCache(path, storage_options)
        self.indices = split_indices(len(self.cache), split, validation_fraction)
        lengths = self.cache.store.index[self.indices, 1]
        longest = int(lengths.max()) if lengths.size else 0
        require(longest <= seq_len, f"seq_len={seq_len} is shorter than the longest cached context ({longest} tokens). "
                                    f"Pass seq_len >= {longest}.")
        if num_samples is not None:
            require(0 < num_samples <= self.indices.size, f"num_samples={num_samples} must be in [1, "
                                                          f"{self.indices.size}] (the {split} split's contexts).")
            rng = np.random.default_rng(seed)
            self.indices = np.sort(rng.choice(self.indices, num_samples, replace=False))
        self.seq_len, self.pad_token_id = seq_len, pad_token_id
        self.ratios = torch.tensor(self.cache.ratios, dtype=torch.float32)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        ids = self.cache.context(j)
        out = np.full(self.seq_len, self.pad_token_id, dtype=np.int64)
        out[:ids.size] = ids
        mask = np.zeros(self.seq_len, dtype=np.int64)
        mask[:ids.size] = 1
        return {"input_ids": torch.from_numpy(out), "attention_mask": torch.from_numpy(mask),
                "ratios": self.ratios.clone(), "retention": torch.from_numpy(self.cache.retention[j].copy())}


__all__ = ["LabelCache", "PoCLabels", "cache_key", "cache_state", "check_replaceable", "open_cache", "split_indices",
           "write_cache"]
