"""Exact match and token F1 of a predicted answer, the SQuAD way.

    normalize_answer("The  Cat, sat!")          # "cat sat"
    exact_match("the cat", ["Cat", "dog"])      # 1.0: max over the acceptable answers
    f1("the cat sat", ["cat sat down"])         # 0.8: precision 2/2, recall 2/3

Both texts are normalised first (lowercase; ASCII punctuation removed; the articles a/an/the
removed; whitespace collapsed), as in the official SQuAD evaluation script. A prediction is scored
against each acceptable answer and the best score counts. Token F1 is over whitespace tokens of the
normalised texts, counting repeats (a bag of words); when either side normalises to nothing it is 1.0
if both do and 0.0 otherwise (SQuAD v2's rule). An empty list of answers scores 0.0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse whitespace (SQuAD's normalize_answer)."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(answers) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(prediction: str, answers: Iterable[str] | str) -> float:
    """1.0 when the normalised prediction equals some normalised answer, else 0.0."""
    pred = normalize_answer(prediction)
    return max((float(pred == normalize_answer(a)) for a in _as_list(answers)), default=0.0)


def token_overlap_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: Iterable[str] | str) -> float:
    """The best token F1 of the prediction against any answer (normalised bags of words)."""
    pred = normalize_answer(prediction).split()
    return max((token_overlap_f1(pred, normalize_answer(a).split()) for a in _as_list(answers)), default=0.0)
