"""RAM's parameter-free operations on small hand-checked examples (methods.md §1.1, §1.2)."""

import math

import pytest
import torch

from framework.models.compression.ram import (contrastive_loss, effective_ratio, keep_count, keep_fraction_for_ratio,
                                              masked_mean, nominal_ratio, segment_bounds, select_segments,
                                              skim_vector, skim_weights)

X, Y, XY, NEG_X = [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]   # cosines to X: 1, 0, 1/sqrt(2), -1


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---- segments and pooling

def test_segment_bounds_cover_n_with_a_shorter_last_segment():
    assert segment_bounds(120, 50) == [(0, 50), (50, 100), (100, 120)]
    assert segment_bounds(100, 50) == [(0, 50), (50, 100)]
    assert segment_bounds(7, 50) == [(0, 7)]
    assert segment_bounds(0, 50) == []
    bounds = segment_bounds(1234, 17)
    assert bounds[0][0] == 0 and bounds[-1][1] == 1234
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(e - s == 17 for s, e in bounds[:-1]) and 0 < bounds[-1][1] - bounds[-1][0] <= 17


def test_masked_mean_ignores_padding():
    hidden = t([[[1, 2], [3, 4], [100, 100]],
                [[5, 6], [-7, 8], [9, -10]],
                [[1, 1], [1, 1], [1, 1]]])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    expected = t([[(1 + 3) / 2, (2 + 4) / 2], [(5 - 7 + 9) / 3, (6 + 8 - 10) / 3], [0, 0]])
    assert torch.allclose(masked_mean(hidden, mask), expected)


# ---- close reading: how many and which segments are kept

def test_keep_count_is_a_robust_floor():
    assert keep_count(10, 0.25) == 2
    assert keep_count(10, 0.35) == 3
    assert 0.29 * 100 < 29                    # float error a plain floor would turn into 28
    assert keep_count(100, 0.29) == 29
    assert keep_count(10, 0.0) == 0 and keep_count(10, 1.0) == 10
    assert keep_count(10, 1.5) == 10 and keep_count(10, -0.1) == 0
    assert keep_count(0, 0.5) == 0


@pytest.mark.parametrize("rho", [0.0, 0.1, 0.25, 0.35, 0.5, 1.0])
def test_select_segments_keeps_the_top_scores_in_original_order(rho):
    scores = torch.tensor([0.3, -0.2, 0.9, 0.1, 0.8, -0.5, 0.05, 0.7, 0.0, 0.4])
    k = math.floor(rho * 10 + 1e-9)
    kept = select_segments(scores, rho)
    assert kept.dtype == torch.long and len(kept) == k
    assert kept.tolist() == sorted(kept.tolist())
    by_score = sorted(range(10), key=lambda i: -scores[i].item())[:k]
    assert sorted(by_score) == kept.tolist()


def test_select_segments_literal():
    scores = torch.tensor([0.3, -0.2, 0.9, 0.1, 0.8, -0.5, 0.05, 0.7, 0.0, 0.4])
    assert select_segments(scores, 0.3).tolist() == [2, 4, 7]
    assert select_segments(scores, 0.5).tolist() == [0, 2, 4, 7, 9]


# ---- skimming

def test_skim_weights_are_a_softmax_of_cosines_over_valid_tokens():
    hidden = t([X, Y, [2.0, 2.0], [5.0, 5.0], NEG_X])
    mask = torch.tensor([True, True, True, False, True])
    q = t([3.0, 0.0])
    w = skim_weights(hidden, mask, q)
    s = 1 / math.sqrt(2)
    e = [math.exp(1), math.exp(0), math.exp(s), 0.0, math.exp(-1)]
    expected = t([v / sum(e) for v in e])
    assert torch.allclose(w, expected)
    assert w[3] == 0
    assert math.isclose(w.sum().item(), 1.0, abs_tol=1e-12)


def test_skim_vector_is_the_weighted_sum():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, True, True, False])
    q = torch.randn(5, generator=g, dtype=torch.float64)
    w = skim_weights(hidden, mask, q)
    expected = sum(w[i] * hidden[i] for i in range(7))
    assert torch.allclose(skim_vector(hidden, mask, q), expected)
    assert torch.allclose(w[~mask], torch.zeros(2, dtype=torch.float64))
    assert math.isclose(w[mask].sum().item(), 1.0, abs_tol=1e-12)


def test_skim_of_an_all_padding_row_is_zero_with_finite_gradient():
    hidden = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, dtype=torch.bool)
    v = skim_vector(hidden, mask, torch.ones(4, dtype=torch.float64))
    assert torch.equal(v, torch.zeros(4, dtype=torch.float64))
    v.sum().backward()
    assert torch.isfinite(hidden.grad).all()


def test_skim_gradient_reaches_hidden():
    hidden = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    skim_vector(hidden, torch.tensor([True, True, True, False]), torch.ones(3, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad[:3].abs().sum() > 0
    assert torch.equal(hidden.grad[3], torch.zeros(3, dtype=torch.float64))


# ---- contrastive loss

def contrastive_case():
    query = t([X, [2.0, 0.0], [0.0, 1.0]])
    segments = t([[X, [0.0, 3.0], XY],                 # sample 0: cos 1, 0, 1/sqrt(2)
                  [[4.0, 0.0], Y, NEG_X],              # sample 1: cos 1, 0, -1 (last invalid)
                  [X, Y, XY]])                         # sample 2: no valid positive
    valid = torch.tensor([[True, True, True], [True, True, False], [True, True, False]])
    positive = torch.tensor([[True, False, True],      # two positives
                             [False, True, False],
                             [False, False, True]])    # its only positive is an invalid segment
    return query, segments, valid, positive


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_contrastive_loss_matches_direct_computation(tau):
    query, segments, valid, positive = contrastive_case()
    s = 1 / math.sqrt(2)
    cos = [[1.0, 0.0, s], [1.0, 0.0, -1.0]]
    losses = []
    for b in range(2):
        num = sum(math.exp(cos[b][i] / tau) for i in range(3) if positive[b, i] and valid[b, i])
        den = sum(math.exp(cos[b][i] / tau) for i in range(3) if valid[b, i])
        losses.append(-math.log(num / den))
    expected = sum(losses) / 2                        # sample 2 has no valid positive: not averaged in
    loss = contrastive_loss(query, segments, valid, positive, tau=tau)
    assert loss.dim() == 0
    assert math.isclose(loss.item(), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_contrastive_loss_sample_1_literal():
    query, segments, valid, positive = contrastive_case()
    loss = contrastive_loss(query[1:2], segments[1:2], valid[1:2], positive[1:2], tau=0.5)
    # -log(e^0 / (e^2 + e^0)); the invalid segment (cos -1) is not in the denominator
    assert math.isclose(loss.item(), math.log(math.exp(2) + 1), rel_tol=1e-12)


def test_contrastive_loss_default_tau_is_0_05():
    query, segments, valid, positive = contrastive_case()
    assert torch.allclose(contrastive_loss(query, segments, valid, positive),
                          contrastive_loss(query, segments, valid, positive, tau=0.05))


def test_contrastive_loss_gradients_are_finite():
    query, segments, valid, positive = contrastive_case()
    query.requires_grad_(True)
    segments.requires_grad_(True)
    contrastive_loss(query, segments, valid, positive).backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(segments.grad).all()
    assert torch.equal(query.grad[2], torch.zeros(2, dtype=torch.float64))   # excluded sample
    assert segments.grad[0].abs().sum() > 0


def test_contrastive_loss_without_positives_is_a_connected_zero():
    query, segments, valid, _ = contrastive_case()
    query.requires_grad_(True)
    loss = contrastive_loss(query, segments, valid, torch.zeros(3, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(query.grad, torch.zeros_like(query))


# ---- compression accounting

def test_effective_ratio_on_hand_values():
    assert math.isclose(effective_ratio(10, 50, 0.25), 500 / (2 * 50 + 8))       # k = 2
    assert math.isclose(effective_ratio(8, 50, 0.125), 400 / (1 * 50 + 7))       # k = 1
    assert effective_ratio(10, 50, 0.0) == 50.0
    assert effective_ratio(10, 50, 1.0) == 1.0


def test_nominal_ratio_on_hand_values():
    assert math.isclose(nominal_ratio(50, 0.25), 50 / (12.5 + 0.75))              # ~3.8x
    assert math.isclose(nominal_ratio(50, 0.125), 50 / (6.25 + 0.875))            # ~7.0x
    assert nominal_ratio(50, 0.0) == 50.0 and nominal_ratio(50, 1.0) == 1.0


@pytest.mark.parametrize("rho", [0.0, 0.05, 0.125, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seg", [2, 50, 100])
def test_keep_fraction_for_ratio_inverts_nominal_ratio(rho, seg):
    assert math.isclose(keep_fraction_for_ratio(nominal_ratio(seg, rho), seg), rho, abs_tol=1e-12)


def test_keep_fraction_for_ratio_edges():
    assert keep_fraction_for_ratio(4.0, 50) == pytest.approx((50 / 4 - 1) / 49)
    assert keep_fraction_for_ratio(50, 50) == 0.0 and keep_fraction_for_ratio(80, 50) == 0.0
    assert keep_fraction_for_ratio(1.0, 50) == 1.0 and keep_fraction_for_ratio(0.5, 50) == 1.0
