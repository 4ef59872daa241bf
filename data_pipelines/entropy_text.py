"""Generated text of controlled entropy: word sequences from a seeded first-order Markov chain.

    {"kind": "entropy_text", "seq_len": 64}                                    # temperature 1.0
    {"kind": "entropy_text", "seq_len": 64, "temperature": [0.3, 3.0]}        # drawn per sample
    {"kind": "entropy_text", "seq_len": 64, "temperature": 0.5, "seed": 1}    # other samples, same chain

The "language" is a Markov chain over ``words`` single-token words of the tokenizer (lowercase
words of 3+ letters with a leading space, e.g. ``" house"``). Its transition scores are standard
normal, drawn once from ``chain_seed``; the next-word distribution from word ``a`` is
``softmax(scores[a] / temperature)``. Temperature sets the per-token entropy: near 0 the chain is
almost deterministic (entropy near 0 nats), large temperatures approach the uniform chain
(``log(words)`` nats). A ``[lo, hi]`` temperature is drawn per sample, log-uniformly, so one
corpus holds samples of different entropy (:meth:`EntropyText.temperature` tells which).

Every sample is a pure function of ``(chain_seed, seed, index)``: ``seed`` picks the samples,
``chain_seed`` the language, so ``seed=1`` gives held-out samples of the same language.
Samples look like the ``text`` kind's: ``{"input_ids", "labels", "document_ids"}`` of ``seq_len``.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from data_pipelines.errors import DataConfigError, require

WORD = re.compile(r" [a-z]{3,}")


def check_temperature(temperature) -> tuple[float, float]:
    """(lo, hi) of a temperature given as a positive number or a [lo, hi] pair; DataConfigError otherwise."""
    pair = temperature if isinstance(temperature, (list, tuple)) else [temperature, temperature]
    ok = (len(pair) == 2 and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in pair)
          and 0 < pair[0] <= pair[1])
    if not ok:
        raise DataConfigError(f"data spec temperature={temperature!r} must be a positive number, or [lo, hi] with "
                              "0 < lo <= hi (drawn per sample), e.g. 1.0 or [0.3, 3.0].")
    return float(pair[0]), float(pair[1])


def vocabulary_words(tokenizer) -> list[int]:
    """Sorted ids of the tokenizer's single-token lowercase words (with their leading space)."""
    ids = []
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if WORD.fullmatch(text):
            ids.append(int(i))
    return sorted(ids)


def transition_probs(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Row-stochastic [V, V] matrix softmax(scores / temperature)."""
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def chain_entropy(scores: np.ndarray, temperature: float) -> float:
    """The chain's entropy rate in nats per token (row entropies weighted by the stationary distribution)."""
    p = transition_probs(scores, temperature)
    rows = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    pi = np.full(len(p), 1.0 / len(p))
    for _ in range(200):
        pi = pi @ p
    return float(pi @ rows)


class EntropyText:
    """Map-style source of ``seq_len``-word samples of a seeded Markov chain (module docstring)."""

    def __init__(self, tokenizer, seq_len: int, num_samples: int = 10_000, seed: int = 0, words: int = 64,
                 temperature=1.0, chain_seed: int = 0):
        self.lo, self.hi = check_temperature(temperature)
        require(num_samples >= 1, f"num_samples={num_samples} must be >= 1, e.g. 10000.")
        candidates = vocabulary_words(tokenizer)
        require(2 <= words <= len(candidates),
                f"words={words} must be in [2, {len(candidates)}]: the tokenizer has {len(candidates)} single-token "
                "lowercase words. Fix: e.g. words=64.")
        rng = np.random.default_rng([int(chain_seed), 0xC4A1])
        self.word_ids = np.asarray(sorted(rng.choice(candidates, size=words, replace=False)), dtype=np.int64)
        self.scores = rng.standard_normal((words, words))
        self.seq_len, self.num_samples, self.seed = seq_len, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([int(self.seed) & (2**63 - 1), i, 0xE27]))

    def temperature(self, i: int) -> float:
        """The temperature sample i was drawn at (log-uniform in [lo, hi])."""
        if self.lo == self.hi:
            return self.lo
        u = self._rng(int(i)).random()
        return math.exp(math.log(self.lo) + u * (math.log(self.hi) - math.log(self.lo)))

    def entropy(self, i: int) -> float:
        """The entropy rate (nats per token) of the chain sample i was drawn from."""
        return chain_entropy(self.scores, self.temperature(i))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} is out of range for {len(self)} samples")
        i %= len(self)
        rng = self._rng(i)
        rng.random()  # the draw temperature() uses
        cum = np.cumsum(transition_probs(self.scores, self.temperature(i)), axis=1)
        u = rng.random(self.seq_len)
        states = np.empty(self.seq_len, dtype=np.int64)
        state = int(rng.integers(len(self.word_ids)))
        for t in range(self.seq_len):
            states[t] = state
            state = min(int(np.searchsorted(cum[state], u[t], side="right")), len(self.word_ids) - 1)
        ids = torch.from_numpy(self.word_ids[states])
        return {"input_ids": ids, "labels": ids.clone(), "document_ids": torch.zeros(self.seq_len, dtype=torch.long)}
