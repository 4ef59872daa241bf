"""Reconstruction metrics of the autoencoder study (methods.md §4): how faithfully x' = dec(enc(x))
reproduces x, on token lists (token ids or strings; a sequence such as a list or a 1-D tensor).

    token_f1(pred, ref)     # bag-of-tokens overlap F1 (repeats count), as in SQuAD's token F1
    bleu(pred, ref)         # sentence BLEU-4, brevity penalty, add-one smoothing for n > 1
    rouge_l(pred, ref)      # longest-common-subsequence F-measure, beta = 1

All three lie in [0, 1]; identical lists score 1.0 and lists sharing no token score 0.0. When both
lists are empty each metric is 1.0; when only one is empty it is 0.0. Texts are not normalised or
tokenised here: pass the tokens (e.g. the tokenizer's ids, or ``text.split()``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from framework.metrics.qa_scoring import token_overlap_f1


def _tokens(x, name: str) -> list:
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name} is a string; these metrics work on token lists. Fix: pass its tokens, e.g. "
                         "text.split() or the tokenizer's ids")
    return list(x.tolist()) if hasattr(x, "tolist") else list(x)


def token_f1(pred: Sequence, ref: Sequence) -> float:
    """F1 of the multiset overlap: precision = overlap / len(pred), recall = overlap / len(ref)."""
    return token_overlap_f1(_tokens(pred, "pred"), _tokens(ref, "ref"))


def _ngrams(tokens: list, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(pred: Sequence, ref: Sequence, max_n: int = 4) -> float:
    """Sentence BLEU of pred against one reference.

    BLEU = BP · exp( (1/N) Σ_{n=1..N} log p_n ), N = max_n, where p_n is the clipped n-gram precision
    (matches counted at most as often as the n-gram occurs in ref). Smoothing ("BLEU+1", Lin & Och
    2004): p_1 = m_1 / c_1 unsmoothed, p_n = (m_n + 1) / (c_n + 1) for n > 1, with m_n the clipped
    matches and c_n the number of n-grams of pred. So BLEU is 0 exactly when no unigram matches.
    Brevity penalty BP = 1 if len(pred) > len(ref) else exp(1 - len(ref) / len(pred))."""
    if max_n < 1:
        raise ValueError(f"max_n={max_n}; BLEU needs n-grams of order 1 or more. Fix: max_n=4")
    p, r = _tokens(pred, "pred"), _tokens(ref, "ref")
    if not p or not r:
        return float(not p and not r)
    log_sum = 0.0
    for n in range(1, max_n + 1):
        pred_ngrams, ref_ngrams = _ngrams(p, n), _ngrams(r, n)
        matches = sum((pred_ngrams & ref_ngrams).values())
        total = sum(pred_ngrams.values())
        if n == 1:
            if matches == 0:
                return 0.0
            log_sum += math.log(matches / total)
        else:
            log_sum += math.log((matches + 1) / (total + 1))
    bp = 1.0 if len(p) > len(r) else math.exp(1.0 - len(r) / len(p))
    return bp * math.exp(log_sum / max_n)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a)·len(b)) time)."""
    if len(b) > len(a):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            keep = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = keep
    return row[-1]


def rouge_l(pred: Sequence, ref: Sequence) -> float:
    """ROUGE-L F-measure (beta = 1): P = LCS / len(pred), R = LCS / len(ref), F = 2PR / (P + R)."""
    p, r = _tokens(pred, "pred"), _tokens(ref, "ref")
    if not p or not r:
        return float(not p and not r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)
