"""Synthetic long-context tasks on natural filler text: passkey retrieval and multi-key needles.

Samples are built from token ids, not text: the filler is a slice of the shipped novels
(tokenized once per process), and the short template pieces are tokenized separately and
concatenated. That keeps a 1M-token sample to a few array copies. Every sample is a pure
function of ``(seed, index)``, so any process, rank or loader worker builds the same one.

The tokenizer must split digits one per token (the project tokenizer does), or at least
tokenize the key digits the same way wherever they occur; the check in ``__init__`` names
the problem otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from data_pipelines.corpus import filler_tokens
from data_pipelines.errors import require

IGNORE_INDEX = -100
PASSKEY_REPEAT_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
"""The haystack of the passkey literature (Mohtashami and Jaggi, 2023): pass it as ``filler``."""
_SNAP_WINDOW = 64  # a needle moves at most this many tokens to land at a sentence start


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one sample: a pure function of (seed, index, stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), int(index), int(stream)]))


@dataclass(frozen=True)
class _Filler:
    tokens: np.ndarray  # int32, used cyclically
    sentence_starts: np.ndarray  # sorted positions that follow a sentence end


def _prepare_filler(tokenizer, filler) -> _Filler:
    if filler is None:
        tokens = filler_tokens(tokenizer)
    elif isinstance(filler, str):
        require(len(filler.strip()) > 0, "filler='' is empty: filler text must contain words. Pass None to use the shipped novels.")
        tokens = np.asarray(tokenizer(filler, add_special_tokens=False)["input_ids"], dtype=np.int32)
    else:
        tokens = np.asarray(filler, dtype=np.int32)
    require(
        tokens.ndim == 1 and tokens.size >= 16,
        f"filler has {tokens.size} tokens: it needs at least 16 (it is repeated cyclically). Pass longer text, or None for the shipped novels.",
    )
    ends = _sentence_end_ids(tokenizer)
    starts = (np.flatnonzero(np.isin(tokens, ends)) + 1) % tokens.size
    starts = np.unique(starts) if starts.size else np.zeros(1, dtype=np.int64)
    return _Filler(tokens, starts)


def _sentence_end_ids(tokenizer) -> np.ndarray:
    vocab = tokenizer.get_vocab()
    ids = []
    for token, idx in vocab.items():
        text = tokenizer.convert_tokens_to_string([token]).rstrip('"\' ')
        if text.endswith((".", "!", "?")) and not text.endswith(".."):
            ids.append(idx)
    return np.asarray(sorted(ids), dtype=np.int64)


def _copy_cyclic(src: np.ndarray, start: int, length: int, out: np.ndarray) -> None:
    """out[:length] = src[start], src[start+1], ... taken cyclically."""
    n, done, pos = src.size, 0, start % src.size
    while done < length:
        take = min(length - done, n - pos)
        out[done:done + take] = src[pos:pos + take]
        done, pos = done + take, 0


FILLER_STARTS = ("sentence", "token")


class _NeedleTaskBase:
    """Shared machinery: filler slicing, needle placement, tensor assembly."""

    def __init__(self, tokenizer, seq_len: int, num_samples: int, seed: int, filler, filler_start: str = "sentence"):
        require(isinstance(seq_len, int) and seq_len > 0, f"seq_len={seq_len!r} must be a positive int. Pass e.g. seq_len=4096.")
        require(filler_start in FILLER_STARTS,
                f"filler_start={filler_start!r} must be one of {FILLER_STARTS}. Pass \"sentence\" (the literature's "
                "haystacks) or \"token\" (training: every offset of the filler, so every phase of it before the question).")
        self.filler_start = filler_start
        require(
            isinstance(num_samples, int) and num_samples > 0,
            f"num_samples={num_samples!r} must be a positive int. Pass e.g. num_samples=10_000.",
        )
        self.tokenizer = tokenizer
        self.seq_len, self.num_samples, self.seed = seq_len, num_samples, int(seed)
        self._filler = _prepare_filler(tokenizer, filler)
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _ids(self, text: str) -> np.ndarray:
        ids = self._cache.get(text)
        if ids is None:
            ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            self._cache[text] = ids
        return ids

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for a task of num_samples={self.num_samples}")
        return index

    def _snap(self, pos: int, lo: int, hi: int, filler_start: int) -> int:
        """Move a filler offset to the nearest sentence start within the snap window and [lo, hi]."""
        starts, n = self._filler.sentence_starts, self._filler.tokens.size
        absolute = (filler_start + pos) % n
        k = int(np.searchsorted(starts, absolute))
        best = pos
        best_dist = _SNAP_WINDOW + 1
        for cand in (k - 1, k, k + 1):
            cand_abs = int(starts[cand % starts.size])
            delta = (cand_abs - absolute + n // 2) % n - n // 2  # signed cyclic distance
            if abs(delta) < best_dist and lo <= pos + delta <= hi:
                best, best_dist = pos + delta, abs(delta)
        return best

    def _assemble(self, head: Sequence[np.ndarray], needles: Sequence[np.ndarray], depths: Sequence[float],
                  tail: Sequence[np.ndarray], answer: np.ndarray, rng: np.random.Generator):
        """Lay out head | filler with needles at the given depths | tail | answer, exactly seq_len tokens."""
        fixed = sum(a.size for a in head) + sum(a.size for a in needles) + sum(a.size for a in tail) + answer.size
        filler_len = self.seq_len - fixed
        require(
            filler_len >= 0,
            f"seq_len={self.seq_len} is too short for this task: its prompt and answer alone take {fixed} tokens. "
            f"Use seq_len >= {fixed + 16}.",
        )
        tokens = self._filler.tokens
        if self.filler_start == "token":
            filler_start = int(rng.integers(tokens.size))
        else:
            filler_start = int(self._filler.sentence_starts[rng.integers(self._filler.sentence_starts.size)])
        cuts = []
        for depth in depths:
            target = int(round(depth * filler_len))
            cuts.append(target if depth in (0.0, 1.0) else self._snap(target, 0, filler_len, filler_start))
        order = np.argsort(cuts, kind="stable")
        out = np.empty(self.seq_len, dtype=np.int64)
        pos = 0
        for piece in head:
            out[pos:pos + piece.size] = piece
            pos += piece.size
        consumed = 0
        needle_spans = [None] * len(needles)
        for j in order:
            take = cuts[j] - consumed
            _copy_cyclic(tokens, filler_start + consumed, take, out[pos:pos + take])
            pos, consumed = pos + take, cuts[j]
            out[pos:pos + needles[j].size] = needles[j]
            needle_spans[j] = (pos, pos + needles[j].size)
            pos += needles[j].size
        take = filler_len - consumed
        _copy_cyclic(tokens, filler_start + consumed, take, out[pos:pos + take])
        pos += take
        for piece in tail:
            out[pos:pos + piece.size] = piece
            pos += piece.size
        out[pos:pos + answer.size] = answer
        assert pos + answer.size == self.seq_len
        return out, needle_spans

    def _tensors(self, ids: np.ndarray, answer_len: int) -> dict[str, torch.Tensor]:
        labels = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)
        input_ids = torch.from_numpy(ids)
        if answer_len:
            labels[-answer_len:] = input_ids[-answer_len:]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "document_ids": torch.zeros(self.seq_len, dtype=torch.long),
        }

    def _text(self, ids: np.ndarray, answer_len: int) -> tuple[str, str]:
        cut = self.seq_len - answer_len
        return self.tokenizer.decode(ids[:cut].tolist()), self.tokenizer.decode(ids[cut:].tolist())


class PasskeyTask(_NeedleTaskBase):
    """Passkey retrieval: a ``digits``-digit key hidden at some depth in natural text.

    ``task[i]`` gives ``input_ids``, ``labels`` (-100 except the key digits at the very end)
    and ``document_ids`` (zeros), each a LongTensor of ``seq_len``. The prompt ends with
    "The pass key is " and the key digits follow, so ``labels`` mark exactly the answer.

    ``depth``: None draws a uniform depth in [0, 1] per sample, or a fixed float in [0, 1]
    (0 = right after the instructions, 1 = right before the question). Depths strictly
    between 0 and 1 snap to the nearest sentence start within 64 tokens.
    ``filler``: None for the shipped novels, or text, or a sequence of token ids; it is
    read cyclically from a random sentence start, so any ``seq_len`` works (tested at 1M+).
    ``label_needle``: also label the key's second mention inside the needle ("... 48213. Remember
    it. 48213 is the pass key."), a copy of the first: a dense signal that teaches a model trained
    from scratch to copy digits, before it can learn to carry them across chunks.
    ``filler_start``: "sentence" (the default) starts the filler at a random sentence; "token" at a
    random token. With a fixed ``seq_len`` and sentence starts, the filler ends before the question at
    only a few offsets of a repeated filler, while a longer haystack ends at others; training on
    "token" starts shows the model every one.
    ``edge_depth_prob``: with a random depth, the chance that it is exactly 0 or 1 (half each). A
    uniform depth almost never puts the needle right before the question, with no filler between
    them, which is where an evaluation at depth 1 puts it.
    """

    INTRO = (
        "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will ask you for the pass key at the end.\n\n"
    )
    QUESTION = "\n\nWhat is the pass key? The pass key is "

    def __init__(self, tokenizer, seq_len: int = 256, num_samples: int = 10_000, seed: int = 0,
                 digits: int = 5, depth: float | None = None, filler=None, label_needle: bool = False,
                 filler_start: str = "sentence", edge_depth_prob: float = 0.0):
        require(
            isinstance(digits, int) and 1 <= digits <= 18,
            f"digits={digits!r} must be an int in [1, 18] (the key is drawn as an integer). Pass e.g. digits=5.",
        )
        require(
            depth is None or (isinstance(depth, (int, float)) and 0.0 <= float(depth) <= 1.0),
            f"depth={depth!r} must be None (uniform random per sample) or a float in [0, 1]. Pass e.g. depth=0.5.",
        )
        require(isinstance(label_needle, bool), f"label_needle={label_needle!r} must be true or false.")
        require(
            isinstance(edge_depth_prob, (int, float)) and not isinstance(edge_depth_prob, bool)
            and 0.0 <= edge_depth_prob <= 1.0,
            f"edge_depth_prob={edge_depth_prob!r} must be a probability in [0, 1]. Pass e.g. edge_depth_prob=0.2.",
        )
        self.edge_depth_prob = float(edge_depth_prob)
        super().__init__(tokenizer, seq_len, num_samples, seed, filler, filler_start)
        self.digits = digits
        self.label_needle = label_needle
        self.depth = None if depth is None else float(depth)
        self._build(0)  # validates seq_len against the prompt length now, not in a loader worker

    def key(self, index: int) -> str:
        """The passkey of sample ``index`` as a string of ``digits`` digits."""
        return self._draw(self._check_index(index))[0]

    def answer_len(self, index: int) -> int:
        """How many tokens the key of sample ``index`` takes: ``digits`` with a tokenizer that splits digits,
        fewer with one that groups them (Llama 3 takes up to three digits per token)."""
        return int(self._ids(self.key(index)).size)

    def _draw(self, index: int):
        rng = sample_rng(self.seed, index)
        key = str(int(rng.integers(10 ** (self.digits - 1), 10 ** self.digits)))
        depth = float(rng.random()) if self.depth is None else self.depth
        if self.depth is None and self.edge_depth_prob > 0:
            edge = rng.random()
            if edge < self.edge_depth_prob:  # exactly 0 or 1, half each: no filler before / after the needle
                depth = float(edge < self.edge_depth_prob / 2)
        return key, depth, rng

    def _build(self, index: int) -> tuple[np.ndarray, int]:
        """The sample's token ids, and where the key's second mention in the needle starts."""
        key, depth, rng = self._draw(self._check_index(index))
        needle = np.concatenate([self._ids(" The pass key is "), self._ids(key),
                                 self._ids(". Remember it. "), self._ids(key), self._ids(" is the pass key.")])
        ids, spans = self._assemble([self._ids(self.INTRO)], [needle], [depth], [self._ids(self.QUESTION)], self._ids(key), rng)
        repeat = spans[0][0] + needle.size - self._ids(" is the pass key.").size - self._ids(key).size
        return ids, repeat

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, repeat = self._build(index)
        n = self.answer_len(index)
        sample = self._tensors(ids, n)
        if self.label_needle:  # the key's second mention inside the needle: a copy of its first
            sample["labels"][repeat:repeat + n] = sample["input_ids"][repeat:repeat + n]
        return sample

    def example(self, index: int) -> tuple[str, str]:
        """The same sample as text: ``(prompt, answer)``; the prompt ends right before the answer."""
        return self._text(self._build(index)[0], self.answer_len(index))


class NeedleTask(_NeedleTaskBase):
    """Multi-key needle in a haystack (RULER-style MK-NIAH) on natural filler.

    ``num_needles`` needles "The special magic number for <key> is: <value>." are spread at
    random depths; the question asks for the value of ``num_queries`` of them, and the
    answer is the values separated by ", " in the order asked. Keys are distinct words drawn
    from a fixed list; values are ``digits``-digit numbers. Labels cover the answer only.
    """

    KEY_WORDS = (
        "amber", "birch", "cobalt", "delta", "ember", "falcon", "garnet", "harbor", "indigo", "juniper",
        "kestrel", "lantern", "meadow", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "tundra",
        "umber", "velvet", "willow", "xenon", "yarrow", "zephyr", "acorn", "basalt", "cedar", "dune",
    )
    INTRO = (
        "Some special magic numbers are hidden inside the following text. Make sure to memorize them. "
        "I will quiz you about the numbers afterwards.\n\n"
    )

    def __init__(self, tokenizer, seq_len: int = 1024, num_samples: int = 10_000, seed: int = 0,
                 num_needles: int = 4, num_queries: int = 1, digits: int = 7, filler=None):
        require(
            isinstance(num_needles, int) and 1 <= num_needles <= len(self.KEY_WORDS),
            f"num_needles={num_needles!r} must be an int in [1, {len(self.KEY_WORDS)}]. Pass e.g. num_needles=4.",
        )
        require(
            isinstance(num_queries, int) and 1 <= num_queries <= num_needles,
            f"num_queries={num_queries!r} must be an int in [1, num_needles={num_needles}]. Pass e.g. num_queries=1.",
        )
        require(isinstance(digits, int) and 1 <= digits <= 18, f"digits={digits!r} must be an int in [1, 18]. Pass e.g. digits=7.")
        super().__init__(tokenizer, seq_len, num_samples, seed, filler)
        self.num_needles, self.num_queries, self.digits = num_needles, num_queries, digits
        self._build(0)  # validates seq_len against the prompt length now, not in a loader worker

    def _draw(self, index: int):
        rng = sample_rng(self.seed, index)
        keys = [self.KEY_WORDS[k] for k in rng.choice(len(self.KEY_WORDS), self.num_needles, replace=False)]
        values = [str(int(v)) for v in rng.integers(10 ** (self.digits - 1), 10 ** self.digits, size=self.num_needles)]
        depths = [float(d) for d in rng.random(self.num_needles)]
        asked = [int(q) for q in rng.choice(self.num_needles, self.num_queries, replace=False)]
        return keys, values, depths, asked, rng

    def _build(self, index: int):
        keys, values, depths, asked, rng = self._draw(self._check_index(index))
        needles = [np.concatenate([self._ids(f" The special magic number for {k} is: "), self._ids(v), self._ids(".")])
                   for k, v in zip(keys, values)]
        names = ", ".join(keys[q] for q in asked)
        what = "What is the special magic number" if self.num_queries == 1 else "What are the special magic numbers"
        question = self._ids(f"\n\n{what} for {names}? Answer: ")
        parts = []
        for j, q in enumerate(asked):
            parts.extend(([self._ids(", ")] if j else []) + [self._ids(values[q])])
        answer = np.concatenate(parts)
        ids, _ = self._assemble([self._ids(self.INTRO)], needles, depths, [question], answer, rng)
        return ids, answer.size

    def answer(self, index: int) -> list[str]:
        """The values asked for in sample ``index``, in the order asked."""
        keys, values, depths, asked, _ = self._draw(self._check_index(index))
        return [values[q] for q in asked]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, answer_len = self._build(index)
        return self._tensors(ids, answer_len)

    def example(self, index: int) -> tuple[str, str]:
        ids, answer_len = self._build(index)
        return self._text(ids, answer_len)
