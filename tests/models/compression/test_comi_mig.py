"""COMI's MIG operators on hand-built 2-D states whose cosines are obvious (methods.md §2.3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from framework.models.compression import comi
from framework.models.compression.comi import (comi_compress, fixed_group_sizes, group_mig, largest_remainder_round,
                                               merge_groups, num_slots, reallocate_group_sizes)

Q = torch.tensor([1.0, 0.0], dtype=torch.float64)
X, Y = [1.0, 0.0], [0.0, 1.0]           # X is the query direction, Y is orthogonal to it


def states(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def random_case(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)


def mean_pool(hidden, sizes):
    out, start = [], 0
    for s in sizes:
        out.append(hidden[start:start + s].mean(dim=0))
        start += s
    return torch.stack(out)


# ---- group counts and sizes

@pytest.mark.parametrize("n,ratio", [(1, 4), (4, 4), (10, 4), (37, 8), (100, 16), (5, 32), (1000, 7)])
def test_sizes_are_positive_and_sum_to_n(n, ratio):
    hidden, q = random_case(n, seed=n)
    sizes = reallocate_group_sizes(hidden, q, ratio)
    assert sizes.dtype == torch.long
    assert int(sizes.sum()) == n and bool((sizes >= 1).all())
    assert len(sizes) <= math.ceil(n / ratio)
    assert comi_compress(hidden, q, ratio).shape == (len(sizes), 8)


@pytest.mark.parametrize("n,ratio", [(1, 4), (4, 4), (10, 4), (37, 8), (5, 32)])
def test_group_count_before_dropping_is_ceil(n, ratio):
    hidden, q = random_case(n)
    g = math.ceil(n / ratio)
    assert num_slots(n, ratio) == g
    assert group_mig(hidden, q, ratio).shape == (g,)
    fixed = fixed_group_sizes(n, ratio)
    assert len(fixed) == g and int(fixed.sum()) == n
    assert fixed[:-1].tolist() == [ratio] * (g - 1) and fixed[-1] == n - ratio * (g - 1)


def test_fixed_sizes_literal():
    assert fixed_group_sizes(10, 4).tolist() == [4, 4, 2]
    assert fixed_group_sizes(8, 4).tolist() == [4, 4]
    assert fixed_group_sizes(0, 4).tolist() == []


def test_relevant_non_redundant_group_gets_fewer_tokens():
    # group 0 holds a copy of the query; group 1 is all-orthogonal; group 2's best token is (1, 3)
    hidden = states(X, Y, Y, Y, Y, Y, Y, Y, Y, Y, Y, [1.0, 3.0])
    c = 1 / math.sqrt(10)                       # cos((1,3), X); cos((1,3), Y) = 3c
    r = [1.0, 0.0, c]                           # R_k: best cosine to the query in each group
    dd = [max(0.0, c), max(0.0, 3 * c), max(c, 3 * c)]   # D_k: max cosine of rep_k to the other reps
    mig = [r[k] - dd[k] for k in range(3)]
    assert torch.allclose(group_mig(hidden, Q, 4), torch.tensor(mig, dtype=torch.float64))
    e = [math.exp(-m) for m in mig]
    raw = [12 * v / sum(e) for v in e]          # ~ [1.22, 6.24, 4.55]: floors 1, 6, 4, +1 to the .55
    assert [math.floor(v) for v in raw] == [1, 6, 4]
    sizes = reallocate_group_sizes(hidden, Q, 4)
    assert sizes.tolist() == [1, 6, 5]
    assert sizes[0] < sizes[1]


def test_without_redundancy_only_relevance_counts():
    hidden = states(X, Y, Y, Y, Y, Y, Y, Y, Y, Y, Y, [1.0, 3.0])
    c = 1 / math.sqrt(10)
    assert torch.allclose(group_mig(hidden, Q, 4, redundancy=False), torch.tensor([1.0, 0.0, c], dtype=torch.float64))
    assert torch.allclose(group_mig(hidden, Q, 4, alpha=2.0, redundancy=False),
                          torch.tensor([2.0, 0.0, 2 * c], dtype=torch.float64))
    assert torch.allclose(group_mig(hidden, Q, 4, beta=0.0), group_mig(hidden, Q, 4, redundancy=False))


def test_single_group_has_no_redundancy():
    hidden = states(X, Y, [1.0, 1.0])
    assert torch.allclose(group_mig(hidden, Q, 4), torch.tensor([1.0], dtype=torch.float64))
    assert reallocate_group_sizes(hidden, Q, 4).tolist() == [3]


def test_zero_size_groups_are_dropped_in_order():
    # MIG = [1 - 0, 0 - 1, 0 - 1]; 6 * softmax(-MIG) ~ [0.38, 2.81, 2.81] -> floors [0, 2, 2] + 1, + 1
    hidden = states(X, Y, Y, Y, Y, [0.0, 2.0])
    e = [math.exp(-1), math.exp(1), math.exp(1)]
    assert [math.floor(6 * v / sum(e)) for v in e] == [0, 2, 2]
    assert reallocate_group_sizes(hidden, Q, 2).tolist() == [3, 3]


def test_largest_remainder_where_naive_rounding_fails():
    values = torch.tensor([1.45, 1.4, 1.35, 5.8])           # sum 10; round() gives 1+1+1+6 = 9
    assert sum(round(v) for v in values.tolist()) == 9
    # floors 1, 1, 1, 5 (= 8); the two largest fractions are .8 (index 3) and .45 (index 0)
    assert largest_remainder_round(values, 10).tolist() == [2, 1, 1, 6]


def test_equal_mig_splits_evenly_with_remainder_to_the_first_groups():
    # all tokens equal -> every group has the same MIG; 10 / 3 each: round() gives 9, largest remainder 10
    hidden = states(*([[1.0, 2.0]] * 10))
    assert torch.allclose(group_mig(hidden, Q, 4), torch.full((3,), 1 / math.sqrt(5) - 1, dtype=torch.float64))
    assert reallocate_group_sizes(hidden, Q, 4).tolist() == [4, 3, 3]


# ---- fine merging

def test_hand_computed_merge_of_three_tokens():
    # cos to the query: 1, 0, s; every token's nearest neighbour in the group has cosine s
    hidden = states(X, Y, [1.0, 1.0])
    s = 1 / math.sqrt(2)
    m = [1 - s, 0 - s, s - s]
    e = [math.exp(v) for v in m]
    z = sum(e)
    expected = torch.tensor([(e[0] + e[2]) / z, (e[1] + e[2]) / z], dtype=torch.float64)
    out = merge_groups(hidden, Q, [3])
    assert out.shape == (1, 2)
    assert torch.allclose(out[0], expected)


def test_hand_computed_merge_with_alpha_beta():
    hidden = states(X, Y, [1.0, 1.0])
    s = 1 / math.sqrt(2)
    m = [2 * 1 - 0.5 * s, 2 * 0 - 0.5 * s, 2 * s - 0.5 * s]
    e = [math.exp(v) for v in m]
    z = sum(e)
    expected = [(e[0] + e[2]) / z, (e[1] + e[2]) / z]
    out = merge_groups(hidden, Q, [3], alpha=2.0, beta=0.5)
    assert torch.allclose(out[0], torch.tensor(expected, dtype=torch.float64))


def test_relevance_only_weights_are_softmax_of_alpha_cos():
    hidden, q = random_case(11)
    sizes = [4, 2, 5]
    alpha = 1.7
    out = merge_groups(hidden, q, sizes, alpha=alpha, beta=0.0)
    start = 0
    for k, size in enumerate(sizes):
        h = hidden[start:start + size]
        cos = torch.tensor([F.cosine_similarity(h[i], q, dim=0).item() for i in range(size)], dtype=torch.float64)
        w = torch.softmax(alpha * cos, dim=0)
        assert torch.allclose(out[k], (w[:, None] * h).sum(0))
        start += size


def test_redundancy_off_equals_beta_zero():
    hidden, q = random_case(23)
    sizes = [5, 1, 9, 8]
    assert torch.allclose(merge_groups(hidden, q, sizes, redundancy=False), merge_groups(hidden, q, sizes, beta=0.0))
    assert torch.allclose(comi_compress(hidden, q, 4, redundancy=False), comi_compress(hidden, q, 4, beta=0.0))


def test_fine_off_is_mean_pooling():
    hidden, q = random_case(23)
    sizes = [5, 1, 9, 8]
    assert torch.allclose(merge_groups(hidden, q, sizes, fine=False), mean_pool(hidden, sizes), rtol=0, atol=1e-12)
    realloc = reallocate_group_sizes(hidden, q, 4)
    assert torch.allclose(comi_compress(hidden, q, 4, fine=False), mean_pool(hidden, realloc.tolist()),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("n,ratio", [(16, 4), (23, 4), (3, 8)])
def test_both_stages_off_is_mean_pooling_over_fixed_groups(n, ratio):
    hidden, q = random_case(n)
    expected = mean_pool(hidden, fixed_group_sizes(n, ratio).tolist())
    assert torch.allclose(comi_compress(hidden, q, ratio, coarse=False, fine=False), expected, rtol=0, atol=1e-12)
    if n % ratio == 0:
        assert torch.allclose(comi_compress(hidden, q, ratio, coarse=False, fine=False),
                              hidden.view(-1, ratio, hidden.shape[1]).mean(1), rtol=0, atol=1e-12)


def test_singleton_group_returns_its_token():
    hidden, q = random_case(5)
    out = merge_groups(hidden, q, [1, 3, 1])
    assert torch.equal(out[0], hidden[0]) and torch.equal(out[2], hidden[4])
    assert torch.equal(merge_groups(hidden[:1], q, [1])[0], hidden[0])


def test_matches_a_per_group_loop_when_chunked(monkeypatch):
    hidden, q = random_case(300, seed=3)
    sizes = reallocate_group_sizes(hidden, q, 8).tolist()
    assert len(set(sizes)) > 1

    def loop(alpha, beta):
        out, start = [], 0
        for size in sizes:
            h = hidden[start:start + size]
            u = h / h.norm(dim=1, keepdim=True)
            rel = u @ (q / q.norm())
            sim = u @ u.T
            red = torch.tensor([max([sim[i, j].item() for j in range(size) if j != i], default=0.0)
                                for i in range(size)], dtype=torch.float64)
            w = torch.softmax(alpha * rel - beta * red, dim=0)
            out.append((w[:, None] * h).sum(0))
            start += size
        return torch.stack(out)

    expected = loop(1.3, 0.7)
    assert torch.allclose(merge_groups(hidden, q, sizes, alpha=1.3, beta=0.7), expected)
    monkeypatch.setattr(comi, "PAIRWISE_BUDGET", 200)      # forces many small chunks
    assert len(list(comi._size_chunks(torch.tensor(sizes)))) > 3
    assert torch.allclose(merge_groups(hidden, q, sizes, alpha=1.3, beta=0.7), expected)


# ---- gradients and errors

@pytest.mark.parametrize("coarse,fine,redundancy", [(True, True, True), (False, True, True), (True, True, False),
                                                    (True, False, True)])
def test_gradients_flow_to_hidden(coarse, fine, redundancy):
    hidden, q = random_case(21)
    hidden.requires_grad_(True)
    out = comi_compress(hidden, q, 4, coarse=coarse, fine=fine, redundancy=redundancy)
    (out * torch.arange(1, out.numel() + 1, dtype=out.dtype).view_as(out)).sum().backward()
    assert torch.isfinite(hidden.grad).all() and bool((hidden.grad != 0).all())


def test_gradient_through_singletons_is_finite():
    hidden, q = random_case(4)
    hidden.requires_grad_(True)
    merge_groups(hidden, q, [1, 2, 1]).sum().backward()
    assert torch.isfinite(hidden.grad).all()
    assert torch.allclose(hidden.grad[0], torch.ones(8, dtype=torch.float64))


def test_learnable_alpha_beta_get_gradients():
    hidden, q = random_case(12)
    alpha = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    comi_compress(hidden, q, 4, alpha=alpha, beta=beta).pow(2).sum().backward()
    assert alpha.grad is not None and beta.grad is not None and alpha.grad != 0 and beta.grad != 0


def test_bad_inputs_are_refused():
    hidden, q = random_case(6)
    with pytest.raises(ValueError, match="sum"):
        merge_groups(hidden, q, [2, 2])
    with pytest.raises(ValueError, match="ratio"):
        comi_compress(hidden, q, 0)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        comi_compress(hidden[None], q, 2)


def test_merge_alpha_beta_weigh_only_the_fine_step():
    hidden, q = random_case(40, seed=3)
    sizes = reallocate_group_sizes(hidden, q, 8, alpha=1.0, beta=1.0)
    out = comi_compress(hidden, q, 8, alpha=1.0, beta=1.0, merge_alpha=6.0, merge_beta=0.5)
    assert torch.allclose(out, merge_groups(hidden, q, sizes, alpha=6.0, beta=0.5))
    assert torch.equal(comi_compress(hidden, q, 8, merge_alpha=None), comi_compress(hidden, q, 8))


def test_a_large_merge_alpha_keeps_the_most_relevant_token_of_a_group():
    # one group of three tokens: cos to the query 1, 0 and -1; alpha_m = 50 leaves the first alone
    hidden = states(X, Y, [-1.0, 0.0])
    out = comi_compress(hidden, Q, 3, coarse=False, redundancy=False, merge_alpha=50.0)
    assert torch.allclose(out[0], hidden[0], atol=1e-12)
    assert not torch.allclose(comi_compress(hidden, Q, 3, coarse=False, redundancy=False)[0], hidden[0], atol=1e-2)
