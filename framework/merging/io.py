"""Streaming safetensors input and output for merging: one tensor name at a time.

    with open_checkpoint("base/") as base:
        for name in base.names():
            tensor = base.get(name)          # loaded now, from whichever shard holds it
    with ShardedWriter("out/") as writer:
        writer.add(name, merged)             # flushed to a shard once max_shard_bytes is reached

A checkpoint is a ``save_pretrained`` directory: ``model.safetensors``, or shards listed in
``model.safetensors.index.json``. Reading keeps every file open with ``safetensors.safe_open``, which
memory-maps it, so a merge holds about one output model plus one tensor per input in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from framework.merging.errors import MergeError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# weight formats never copied from the base into the output (the output's weights are written here)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".msgpack", ".h5")
_SKIPPED_FILES = {WEIGHTS_INDEX, "pytorch_model.bin.index.json", "merge_report.json"}


def weight_files(directory: str) -> dict[str, str]:
    """tensor name -> the safetensors file (full path) that holds it."""
    index = os.path.join(directory, WEIGHTS_INDEX)
    single = os.path.join(directory, WEIGHTS)
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map", {})
        return {name: os.path.join(directory, file) for name, file in weight_map.items()}
    if os.path.isfile(single):
        with safe_open(single, framework="pt") as fh:
            return {name: single for name in fh.keys()}
    raise MergeError(f"{directory!r} holds no safetensors weights ({WEIGHTS} or {WEIGHTS_INDEX}). Fix: save the "
                     "model with save_pretrained(dir) (safetensors is the default), or convert its .bin weights")


class Checkpoint:
    """Lazy, read-only access to the tensors of one safetensors checkpoint directory."""

    def __init__(self, directory: str):
        self.directory = directory
        self._files = weight_files(directory)
        self._stack = contextlib.ExitStack()
        self._handles: dict[str, object] = {}

    def _handle(self, path: str):
        if path not in self._handles:
            self._handles[path] = self._stack.enter_context(safe_open(path, framework="pt"))
        return self._handles[path]

    def names(self) -> list[str]:
        return list(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self._files[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(self._files[name]).get_tensor(name)

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(directory: str) -> Checkpoint:
    return Checkpoint(directory)


class ShardedWriter:
    """Write tensors to ``model.safetensors``, or to ``model-0000i-of-0000n.safetensors`` shards with a
    ``model.safetensors.index.json`` once the tensors exceed ``max_shard_bytes``. Tensors are kept in
    memory only until their shard is written."""

    def __init__(self, directory: str, max_shard_bytes: int = 4 * 1024 ** 3):
        if max_shard_bytes <= 0:
            raise MergeError(f"max_shard_bytes={max_shard_bytes} must be positive")
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        os.makedirs(directory, exist_ok=True)
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        if not self._pending:
            return
        tmp = f".shard-{len(self._shards):05d}.safetensors.tmp"
        save_file(self._pending, os.path.join(self.directory, tmp), metadata={"format": "pt"})
        self._shards.append((tmp, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write what is left, name the shards, write the index if there are several; the file names."""
        self._flush()
        if len(self._shards) == 1:
            os.replace(os.path.join(self.directory, self._shards[0][0]), os.path.join(self.directory, WEIGHTS))
            return [WEIGHTS]
        count, weight_map, files = len(self._shards), {}, []
        for i, (tmp, names) in enumerate(self._shards, start=1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            os.replace(os.path.join(self.directory, tmp), os.path.join(self.directory, final))
            weight_map.update({name: final for name in names})
            files.append(final)
        with open(os.path.join(self.directory, WEIGHTS_INDEX), "w") as fh:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, fh, indent=2)
        return files

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()


def copy_side_files(base_dir: str, out_dir: str) -> list[str]:
    """Copy the base's config, generation config and tokenizer files (every top-level file that is not a
    weight file) into out_dir, so that the output loads with from_pretrained; the names copied."""
    os.makedirs(out_dir, exist_ok=True)
    copied = []
    for name in sorted(os.listdir(base_dir)):
        path = os.path.join(base_dir, name)
        if not os.path.isfile(path) or name in _SKIPPED_FILES or name.lower().endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copyfile(path, os.path.join(out_dir, name))
        copied.append(name)
    return copied


def read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise MergeError(f"{directory!r} has no {CONFIG}. Fix: pass a directory written by save_pretrained")
    with open(path) as fh:
        return json.load(fh)
