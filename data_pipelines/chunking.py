"""Chunk-boundary strategies for chunk-recurrent training (CoMeT paper, ``research/comet.md`` §3).

A *chunk plan* splits a sequence of ``length`` tokens into consecutive chunks of at most
``chunk_size`` tokens. Strategies:

- ``fixed``: ``chunk_size`` chunks from the start; the remainder is the last chunk.
- ``right_aligned``: the remainder comes first, so the last chunk ends a full chunk.
- ``random``: a random number of chunks (at least the minimum needed, at most about twice
  that, within the ``min_chunk`` floor), each of random size in ``[min_chunk, chunk_size]``.
- ``uniform``: the minimum number of chunks, sizes as equal as possible.
- ``semantic``: greedy chunks that end right after a boundary token (``<|im_end|>``,
  newlines, ``.``, ``,``, ``。``) when one lies in the second half of the chunk budget,
  else at ``chunk_size``.
- ``paper``: per sample, one of the above drawn with the paper's length-dependent
  probabilities (fixed 80/60/60 %, right-aligned 10/10/10 %, random 10/20/10 %, uniform
  -/5/20 %, semantic -/5/- % for length < chunk_size / < 0.75·max_len / otherwise).

:class:`ChunkedSource` wraps any map-style source and adds ``chunk_ids`` (LongTensor of the
sequence length: the chunk index of every token). Plans are drawn from ``(seed, index)``,
so they are reproducible in any process.
"""

from __future__ import annotations

import numpy as np
import torch

from data_pipelines.errors import require
from data_pipelines.synthetic import sample_rng

STRATEGIES = ("fixed", "right_aligned", "random", "uniform", "semantic", "paper")
SEMANTIC_TEXTS = ("<|im_end|>", "\n", "\n\n", ".", ",", "\u3002")
_PAPER_TABLE = {  # strategy -> probabilities for (len < chunk, len < 0.75*max, otherwise)
    "fixed": (0.80, 0.60, 0.60),
    "right_aligned": (0.10, 0.10, 0.10),
    "random": (0.10, 0.20, 0.10),
    "uniform": (0.00, 0.05, 0.20),
    "semantic": (0.00, 0.05, 0.00),
}


def fixed_plan(length: int, chunk_size: int) -> np.ndarray:
    full, rest = divmod(length, chunk_size)
    return np.asarray([chunk_size] * full + ([rest] if rest else []), dtype=np.int64)


def right_aligned_plan(length: int, chunk_size: int) -> np.ndarray:
    return fixed_plan(length, chunk_size)[::-1].copy()


def uniform_plan(length: int, chunk_size: int) -> np.ndarray:
    k = max(1, -(-length // chunk_size))
    base, extra = divmod(length, k)
    return np.asarray([base + 1] * extra + [base] * (k - extra), dtype=np.int64)


def random_plan(length: int, chunk_size: int, rng: np.random.Generator, min_chunk: int = 4) -> np.ndarray:
    kmin = max(1, -(-length // chunk_size))
    kmax = max(kmin, min(2 * kmin, length // max(min_chunk, 1)))
    k = int(rng.integers(kmin, kmax + 1))
    floor = min(min_chunk, length // k)
    sizes = np.full(k, floor, dtype=np.int64)
    room = chunk_size - floor
    left = length - floor * k
    # Spread the rest with random weights, capped at chunk_size; pour any overflow into chunks with room.
    weights = rng.random(k) + 1e-9
    add = np.minimum(np.floor(weights / weights.sum() * left).astype(np.int64), room)
    sizes += add
    left -= int(add.sum())
    for j in rng.permutation(k):
        if left <= 0:
            break
        take = min(left, chunk_size - int(sizes[j]))
        sizes[j] += take
        left -= take
    assert left == 0 and sizes.sum() == length and sizes.max() <= chunk_size
    return sizes


def semantic_plan(length: int, chunk_size: int, boundary: np.ndarray) -> np.ndarray:
    """``boundary[t]`` is True when token t is a semantic boundary token."""
    ends = np.flatnonzero(boundary[:length]) + 1  # a chunk may end right after a boundary token
    sizes, start = [], 0
    while length - start > chunk_size:
        hi = start + chunk_size
        k = np.searchsorted(ends, hi, side="right") - 1
        end = int(ends[k]) if k >= 0 and ends[k] > start + chunk_size // 2 else hi
        sizes.append(end - start)
        start = end
    sizes.append(length - start)
    return np.asarray(sizes, dtype=np.int64)


def paper_strategy(length: int, chunk_size: int, max_len: int, rng: np.random.Generator) -> str:
    column = 0 if length < chunk_size else (1 if length < 0.75 * max_len else 2)
    names = list(_PAPER_TABLE)
    probs = np.asarray([_PAPER_TABLE[n][column] for n in names])
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def chunk_plan(length: int, chunk_size: int, strategy: str, rng: np.random.Generator | None = None,
               boundary: np.ndarray | None = None, max_len: int | None = None, min_chunk: int = 4) -> np.ndarray:
    """Chunk sizes (int64 array summing to ``length``, each <= ``chunk_size``)."""
    if strategy == "paper":
        strategy = paper_strategy(length, chunk_size, max_len or length, rng)
    if strategy == "fixed":
        return fixed_plan(length, chunk_size)
    if strategy == "right_aligned":
        return right_aligned_plan(length, chunk_size)
    if strategy == "uniform":
        return uniform_plan(length, chunk_size)
    if strategy == "random":
        return random_plan(length, chunk_size, rng, min_chunk)
    if strategy == "semantic":
        return semantic_plan(length, chunk_size, boundary)
    raise AssertionError(strategy)


def semantic_token_ids(tokenizer) -> np.ndarray:
    """Ids of tokens that count as semantic boundaries: special end-of-turn tokens, and tokens
    whose text ends with a newline, a full stop, a comma or an ideographic full stop."""
    ids = set()
    for token, idx in tokenizer.get_vocab().items():
        if token == "<|im_end|>":
            ids.add(idx)
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if text and text[-1] in "\n.,\u3002":
            ids.add(idx)
    return np.asarray(sorted(ids), dtype=np.int64)


class ChunkedSource:
    """Adds ``chunk_ids`` (chunk index per token) to the samples of a map-style source."""

    def __init__(self, source, chunk_size: int, strategy: str = "fixed", seed: int = 0, tokenizer=None,
                 min_chunk: int = 4):
        require(strategy in STRATEGIES, f"chunking strategy={strategy!r} is unknown: use one of {', '.join(STRATEGIES)}.")
        require(isinstance(chunk_size, int) and chunk_size >= 1,
                f"chunk_size={chunk_size!r} must be a positive int (tokens per chunk). The paper uses 2048.")
        require(strategy not in ("semantic", "paper") or tokenizer is not None,
                f"strategy={strategy!r} needs the tokenizer to find boundary tokens: pass tokenizer=.")
        self.source, self.chunk_size, self.strategy, self.seed, self.min_chunk = source, chunk_size, strategy, int(seed), min_chunk
        self._semantic = semantic_token_ids(tokenizer) if tokenizer is not None else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.source)

    def plan(self, index: int, input_ids: torch.Tensor) -> np.ndarray:
        length = int(input_ids.shape[-1])
        rng = sample_rng(self.seed, index, stream=1)
        boundary = None
        if self.strategy in ("semantic", "paper"):
            boundary = np.isin(input_ids.numpy(), self._semantic)
        return chunk_plan(length, self.chunk_size, self.strategy, rng, boundary, max_len=length, min_chunk=self.min_chunk)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.source[index])
        sizes = self.plan(index, sample["input_ids"])
        sample["chunk_ids"] = torch.from_numpy(np.repeat(np.arange(len(sizes), dtype=np.int64), sizes))
        return sample

    def __getattr__(self, name):  # expose the wrapped source's helpers (example, key, ...)
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)
