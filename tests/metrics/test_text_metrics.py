"""Reconstruction metrics (framework/metrics/text_metrics.py) on small hand-computed examples."""

import math

import pytest
import torch

from framework.metrics.text_metrics import bleu, lcs_length, rouge_l, token_f1

REF = "the cat sat on the mat".split()     # 6 tokens
PRED = "the cat on the mat".split()        # 5 tokens, "sat" dropped


@pytest.mark.parametrize("metric", [token_f1, bleu, rouge_l])
def test_identical_disjoint_and_empty(metric):
    assert metric(REF, REF) == pytest.approx(1.0)
    assert metric([1, 2, 3], [4, 5, 6]) == 0.0
    assert metric([], []) == 1.0
    assert metric([], [1]) == 0.0 and metric([1], []) == 0.0
    assert metric(torch.tensor([7, 8, 9]), [7, 8, 9]) == pytest.approx(1.0)   # ids as a tensor
    with pytest.raises(ValueError, match="split"):
        metric("the cat", REF)


def test_worked_example():
    # token F1: overlap {the x2, cat, on, mat} = 5, P = 5/5, R = 5/6 -> F1 = 2*(5/6)/(11/6) = 10/11
    assert token_f1(PRED, REF) == pytest.approx(10 / 11)
    # ROUGE-L: LCS = "the cat on the mat" = 5 -> same P, R -> 10/11
    assert lcs_length(PRED, REF) == 5
    assert rouge_l(PRED, REF) == pytest.approx(10 / 11)
    # BLEU: p1 = 5/5; 2-grams of PRED: the-cat, cat-on, on-the, the-mat; 3 occur in REF -> (3+1)/(4+1)
    # 3-grams: the-cat-on, cat-on-the, on-the-mat; 1 match -> (1+1)/(3+1)
    # 4-grams: the-cat-on-the, cat-on-the-mat; 0 matches -> (0+1)/(2+1)
    # BP = exp(1 - 6/5) since the prediction is shorter; BLEU = BP * (1 * 0.8 * 0.5 * 1/3) ** (1/4) ≈ 0.4948
    expected = math.exp(1 - 6 / 5) * (1.0 * 0.8 * 0.5 * (1 / 3)) ** 0.25
    assert bleu(PRED, REF) == pytest.approx(expected)
    assert bleu(PRED, REF) == pytest.approx(0.4948, abs=1e-4)


def test_bleu_clips_and_penalises_only_short_predictions():
    # "the the the" vs REF: clipped unigram matches 2 of 3 (REF has two "the"); bigram the-the: 0 of 2
    # -> p = [2/3, 1/3]; BP = exp(1 - 6/3); max_n = 2
    expected = math.exp(1 - 2) * (2 / 3 * 1 / 3) ** 0.5
    assert bleu("the the the".split(), REF, max_n=2) == pytest.approx(expected)
    # longer than the reference: no brevity penalty; p1 = 6/7, p2 = (5+1)/(6+1)
    longer = REF + ["again"]
    assert bleu(longer, REF, max_n=2) == pytest.approx((6 / 7 * 6 / 7) ** 0.5)
    with pytest.raises(ValueError, match="max_n"):
        bleu(REF, REF, max_n=0)


def test_rouge_l_order_matters_but_f1_does_not():
    assert token_f1([3, 2, 1], [1, 2, 3]) == pytest.approx(1.0)
    # LCS of [3,2,1] and [1,2,3] is 1 -> P = R = 1/3
    assert rouge_l([3, 2, 1], [1, 2, 3]) == pytest.approx(1 / 3)
