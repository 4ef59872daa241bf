"""Fixed-length training windows cut from a token store.

Two ways to lay documents into windows of ``seq_len`` tokens (``packing``):

- ``"concat"``: the store's token stream (documents back to back, each ending with
  ``<|endoftext|>``) is cut into consecutive windows; long documents span several windows
  and short ones are packed densely. A partial last window is dropped. No padding ever.
- ``"aligned"``: a document starts a window whenever it fits; documents of ``seq_len`` or
  more are cut into full windows, and their tail plus following short documents are packed
  greedily into the next window, which is padded when the next document does not fit.
  Nothing is dropped; short documents are never split.

Either way a window is a contiguous slice of the stream, so the window table is two int64
arrays (start, length), and any window is one read. ``document_ids`` number the documents
inside the window from 0 (padding gets the next id), so a model can reset its memory where
they change. ``labels`` equal ``input_ids``, with -100 on padding and, for chat stores, on
every token that is not part of an assistant answer.
"""

from __future__ import annotations

import numpy as np
import torch

from data_pipelines.errors import DataConfigError, require
from data_pipelines.store import TokenStore

IGNORE_INDEX = -100
PACKINGS = ("concat", "aligned")


def document_ids(doc_starts: np.ndarray, start: int, length: int, seq_len: int) -> np.ndarray:
    """Ids of the documents in the window [start, start + length) of the stream, numbered from 0; a
    document that begins strictly inside the window starts a new id; padding gets the next id."""
    lo = np.searchsorted(doc_starts, start, side="right")
    hi = np.searchsorted(doc_starts, start + length, side="left")
    edges = np.concatenate([[0], doc_starts[lo:hi] - start, [length]])
    ids = np.empty(seq_len, dtype=np.int64)
    ids[:length] = np.repeat(np.arange(len(edges) - 1, dtype=np.int64), np.diff(edges))
    ids[length:] = len(edges) - 1
    return ids


def concat_windows(num_tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    count = num_tokens // seq_len
    return np.arange(count, dtype=np.int64) * seq_len, np.full(count, seq_len, dtype=np.int64)


def aligned_windows(offsets: np.ndarray, lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy in-order packing that never splits a document shorter than ``seq_len``."""
    starts, sizes = [], []
    cur_start, cur_len = 0, 0
    for off, length in zip(offsets.tolist(), lengths.tolist()):
        if length >= seq_len:
            if cur_len:
                starts.append(cur_start)
                sizes.append(cur_len)
            full = length // seq_len
            starts.extend(range(off, off + full * seq_len, seq_len))
            sizes.extend([seq_len] * full)
            cur_start, cur_len = off + full * seq_len, length - full * seq_len
        elif cur_len + length <= seq_len:
            if cur_len == 0:
                cur_start = off
            cur_len += length
        else:
            starts.append(cur_start)
            sizes.append(cur_len)
            cur_start, cur_len = off, length
    if cur_len:
        starts.append(cur_start)
        sizes.append(cur_len)
    return np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


class StoreWindows:
    """Map-style source of ``seq_len``-token windows over a :class:`TokenStore`.

    ``ws[i]`` -> ``{"input_ids", "labels", "document_ids"}``, LongTensors of ``seq_len``.
    """

    def __init__(self, store: TokenStore | str, seq_len: int, packing: str = "concat", pad_token_id: int | None = None,
                 num_samples: int | None = None, seed: int = 0):
        require(isinstance(seq_len, int) and seq_len >= 2, f"seq_len={seq_len!r} must be an int >= 2. Pass e.g. seq_len=32768.")
        require(packing in PACKINGS, f"packing={packing!r} is unknown: use 'concat' (dense, documents may span windows) "
                                     "or 'aligned' (documents start windows, with padding).")
        self.store = TokenStore(store) if isinstance(store, str) else store
        self.seq_len, self.packing = seq_len, packing
        tok = self.store.manifest.get("tokenizer", {})
        self.pad_token_id = pad_token_id if pad_token_id is not None else (tok.get("pad_token_id") or tok.get("eos_token_id") or 0)
        index = self.store.index
        self._doc_offsets = np.ascontiguousarray(index[:, 0])
        if packing == "concat":
            self.starts, self.lengths = concat_windows(self.store.num_tokens, seq_len)
        else:
            self.starts, self.lengths = aligned_windows(index[:, 0], index[:, 1], seq_len)
        if len(self.starts) == 0:
            raise DataConfigError(
                f"the store {self.store.path!r} has {self.store.num_tokens} tokens: not one window of seq_len={seq_len} "
                "with packing='concat'. Use a smaller seq_len, packing='aligned' (pads), or more data."
            )
        if num_samples is not None:
            require(isinstance(num_samples, int) and 0 < num_samples <= len(self.starts),
                    f"num_samples={num_samples!r} must be an int in [1, {len(self.starts)}]: the store {self.store.path!r} "
                    f"gives {len(self.starts)} windows of seq_len={seq_len} with packing={packing!r}. "
                    "Leave num_samples unset to use them all.")
            keep = np.sort(np.random.default_rng([int(seed), 0xC0FFEE]).choice(len(self.starts), num_samples, replace=False))
            self.starts, self.lengths = self.starts[keep], self.lengths[keep]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} is out of range for {len(self)} windows")
        start, length = int(self.starts[i]), int(self.lengths[i])
        ids = np.full(self.seq_len, self.pad_token_id, dtype=np.int64)
        ids[:length] = self.store.tokens(start, length)
        labels = ids.copy()
        labels[length:] = IGNORE_INDEX
        if self.store.has_mask:
            mask = self.store.loss_mask(start, length)
            labels[:length][mask == 0] = IGNORE_INDEX
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "document_ids": torch.from_numpy(document_ids(self._doc_offsets, start, length, self.seq_len)),
        }
