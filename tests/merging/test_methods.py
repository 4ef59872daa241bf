"""Each merging method against a direct computation on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from framework.merging import MergeError, MergeSpec
from framework.merging.methods import merge_task_vectors, merge_tensor
from framework.merging.nan import inverse_norm_coefficients, tensor_norms
from framework.merging.task_vectors import drop_and_rescale, tensor_generator, trim_by_magnitude


def reference_ties(taus, weights, density, lam, base):
    """TIES written entry by entry, as mergekit defines it: trim to the top int(density*n) magnitudes, elect
    the sign of sum_i w_i t_i (0 -> +), weighted mean of the entries w_i t_i that are non-zero with that sign."""
    n = base.numel()
    k = max(1, int(density * n))
    trimmed = []
    for tau in taus:
        flat = tau.reshape(-1).tolist()
        order = sorted(range(n), key=lambda j: -abs(flat[j]))[:k]
        trimmed.append([flat[j] if j in order else 0.0 for j in range(n)])
    out = []
    for j in range(n):
        total = sum(w * t[j] for w, t in zip(weights, trimmed))
        sign = 1.0 if total >= 0 else -1.0
        num = den = 0.0
        for w, t in zip(weights, trimmed):
            v = w * t[j]
            if v != 0 and math.copysign(1.0, v) == sign:
                num += v
                den += w
        out.append(base.reshape(-1)[j].item() + lam * (num / den if abs(den) >= 1e-8 else 0.0))
    return torch.tensor(out).reshape(base.shape)


def test_task_arithmetic_is_base_plus_lambda_times_the_sum():
    base = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    ft = [base + torch.tensor([[0.1, 0.2], [-0.3, 0.0]]), base + torch.tensor([[1.0, -1.0], [0.0, 2.0]])]
    out = merge_tensor(base, ft, [1.0, 1.0], MergeSpec("task_arithmetic", lam=0.5))
    assert torch.allclose(out, base + 0.5 * torch.tensor([[1.1, -0.8], [-0.3, 2.0]]), atol=1e-6)
    weighted = merge_tensor(base, ft, [2.0, -1.0], MergeSpec("task_arithmetic", lam=1.0, weights=[2.0, -1.0]))
    assert torch.allclose(weighted, base + 2 * (ft[0] - base) - (ft[1] - base), atol=1e-6)


def test_ties_trim_elect_and_disjoint_mean_by_hand():
    # density 0.5 keeps 2 of 4 entries: t1 = [3, 0, 0, -4], t2 = [-2, 2, 0, 0], t3 = [1, 0, 0, -2]
    taus = [torch.tensor([3.0, -1.0, 0.5, -4.0]), torch.tensor([-2.0, 2.0, 1.0, -1.0]),
            torch.tensor([1.0, 0.0, 0.0, -2.0])]
    assert trim_by_magnitude(taus[0], 0.5).tolist() == [3.0, 0.0, 0.0, -4.0]
    assert trim_by_magnitude(taus[1], 0.5).tolist() == [-2.0, 2.0, 0.0, 0.0]
    # sums [2, 2, 0, -6] elect [+, +, + (a zero sum elects +), -]; agreeing entries: {3, 1}, {2}, {}, {-4, -2}
    merged = merge_task_vectors(taus, torch.ones(3), "ties", density=0.5)
    assert merged.tolist() == [2.0, 2.0, 0.0, -3.0]
    base = torch.ones(4)
    out = merge_tensor(base, [base + t for t in taus], [1.0] * 3, MergeSpec("ties", density=0.5, lam=0.5))
    assert torch.allclose(out, torch.tensor([2.0, 2.0, 1.0, -0.5]))


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_the_entrywise_definition(density):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 5, generator=gen)
    taus = [torch.randn(6, 5, generator=gen) for _ in range(3)]
    weights = [0.5, 1.0, 2.0]
    spec = MergeSpec("ties", density=density, lam=0.7, weights=weights)
    out = merge_tensor(base, [base + t for t in taus], weights, spec)
    assert torch.allclose(out, reference_ties(taus, weights, density, 0.7, base), atol=1e-5)


def test_dare_is_seeded_and_reproducible():
    tau = torch.randn(100, 100, generator=torch.Generator().manual_seed(0))
    one = drop_and_rescale(tau, 0.3, tensor_generator(7, 0, "w"))
    again = drop_and_rescale(tau, 0.3, tensor_generator(7, 0, "w"))
    other_seed = drop_and_rescale(tau, 0.3, tensor_generator(8, 0, "w"))
    other_tensor = drop_and_rescale(tau, 0.3, tensor_generator(7, 0, "v"))
    assert torch.equal(one, again)
    assert not torch.equal(one, other_seed) and not torch.equal(one, other_tensor)
    kept = one != 0
    # every kept entry is rescaled by 1/density, every other one dropped; about density of them kept
    assert torch.allclose(one[kept], tau[kept] / 0.3)
    assert abs(kept.float().mean().item() - 0.3) < 0.02


def test_dare_l1_rescaling_keeps_the_l1_norm():
    tau = torch.randn(50, 40, generator=torch.Generator().manual_seed(4))
    kept = drop_and_rescale(tau, 0.25, tensor_generator(1, 0, "w"), rescale="l1")
    plain = drop_and_rescale(tau, 0.25, tensor_generator(1, 0, "w"))  # the same mask, rescaled by 1/density
    mask = plain != 0
    assert torch.equal(kept != 0, mask)
    assert kept.abs().sum().item() == pytest.approx(tau.abs().sum().item(), rel=1e-5)
    assert torch.allclose(kept[mask], tau[mask] * tau.abs().sum() / tau[mask].abs().sum(), rtol=1e-5)


def test_trim_keeps_at_least_one_entry():
    tau = torch.tensor([0.1, -0.5, 0.2])
    assert trim_by_magnitude(tau, 0.1).tolist() == [0.0, -0.5, 0.0]


def test_dare_merge_equals_task_arithmetic_of_its_masks():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(40, 30, generator=gen)
    fts = [base + torch.randn(40, 30, generator=gen) for _ in range(2)]
    spec = MergeSpec("dare", density=0.4, lam=0.8, seed=5, weights=[0.3, 0.7])
    out = merge_tensor(base, fts, [0.3, 0.7], spec, name="layer.w")
    expected = base.clone()
    for i, (w, ft) in enumerate(zip([0.3, 0.7], fts)):
        mask = torch.bernoulli(torch.full((40, 30), 0.4), generator=tensor_generator(5, i, "layer.w"))
        expected += 0.8 * w * (ft - base) * mask / 0.4
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(out, merge_tensor(base, fts, [0.3, 0.7], spec, name="layer.w"))


def test_dare_without_dropping_equals_task_arithmetic():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(8, 8, generator=gen)
    fts = [base + torch.randn(8, 8, generator=gen) for _ in range(3)]
    dare = merge_tensor(base, fts, [1.0] * 3, MergeSpec("dare", density=1.0, lam=0.6, seed=9))
    ta = merge_tensor(base, fts, [1.0] * 3, MergeSpec("task_arithmetic", lam=0.6))
    assert torch.allclose(dare, ta, atol=1e-6)
    # dare_ties without dropping: the sign election, then the agreeing entries summed (mergekit's default)
    dare_ties = merge_tensor(base, fts, [1.0] * 3, MergeSpec("dare_ties", density=1.0, lam=0.6, seed=9))
    taus = torch.stack([ft - base for ft in fts])
    sign = torch.where(taus.sum(0) >= 0, 1.0, -1.0)
    agreeing = torch.where(torch.sign(taus) == sign, taus, torch.zeros_like(taus)).sum(0)
    assert torch.allclose(dare_ties, base + 0.6 * agreeing, atol=1e-5)


def test_nan_coefficients_are_normalised_inverse_norms():
    base = torch.zeros(3, 4)
    fts = [base + 1.0, base + 2.0, base - 4.0]  # norms sqrt(12) * (1, 2, 4)
    norms = tensor_norms(base, fts)
    assert norms == pytest.approx([math.sqrt(12) * k for k in (1, 2, 4)])
    coefficients = inverse_norm_coefficients(norms)
    inverse = [1 / n for n in norms]
    assert coefficients == pytest.approx([v / sum(inverse) for v in inverse])
    assert coefficients == pytest.approx([4 / 7, 2 / 7, 1 / 7]) and sum(coefficients) == pytest.approx(1.0)
    # of the fine-tuned weights instead of the task vectors
    assert tensor_norms(base + 1.0, [base + 2.0, base + 3.0], "weights") == pytest.approx([math.sqrt(12) * 2,
                                                                                          math.sqrt(12) * 3])
    # a model that left the tensor at the base is left out; all of them: equal shares
    assert inverse_norm_coefficients([0.0, 2.0, 2.0]) == pytest.approx([0.0, 0.5, 0.5])
    assert inverse_norm_coefficients([0.0, 0.0]) == pytest.approx([0.5, 0.5])


def test_integer_tensors_come_from_the_base():
    base = torch.arange(5)
    assert torch.equal(merge_tensor(base, [base + 1, base + 2], [1.0, 1.0], MergeSpec("ties", density=0.5)), base)


@pytest.mark.parametrize("spec, n, words", [
    (MergeSpec("slerp"), 2, ["unknown merge method", "ties"]),
    (MergeSpec("ties", density=0.0), 2, ["density=0.0", "(0, 1]"]),
    (MergeSpec("dare", density=1.5), 2, ["density=1.5", "Fix"]),
    (MergeSpec("task_arithmetic", lam=float("nan")), 2, ["lambda=nan", "Fix"]),
    (MergeSpec("task_arithmetic", lam=0.0), 2, ["lambda=0.0", "non-zero"]),
    (MergeSpec("ties", weights=[1.0]), 2, ["1 weights for 2 models", "Fix"]),
    (MergeSpec("ties", density=0.5, weights=[1.0, -1.0]), 2, ["positive", "Fix"]),
    (MergeSpec("nan+ties", weights=[1.0, 1.0]), 2, ["NAN coefficients", "drop --weights"]),
    (MergeSpec("task_arithmetic", density=0.5), 2, ["no effect on task_arithmetic", "Fix"]),
    (MergeSpec("ties"), 0, ["no models to merge", "Fix"]),
    (MergeSpec("dare", density=0.5, dare_rescale="l2"), 2, ["dare_rescale='l2'", "Fix"]),
    (MergeSpec("hi_merging", density=0.5), 2, ["no effect on hi_merging", "Fix"]),
])
def test_bad_specs_name_the_cause_and_the_fix(spec, n, words):
    with pytest.raises(MergeError) as err:
        spec.validate(n)
    for word in words:
        assert word in str(err.value)


def test_the_docs_table_is_the_recorded_benchmark():
    """docs/merging.md shows benchmarks/results/merging_tasks.json as it is."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    result = json.loads((repo / "benchmarks" / "results" / "merging_tasks.json").read_text())
    page = (repo / "docs" / "merging.md").read_text()
    for label, s in result["scores"].items():
        assert f"| `{label}` | {s['count']:.3f} | {s['copy']:.3f} | {s['mean']:.3f} |" in page, label
    hi = result["coefficients"]["hi_merging"]
    assert f"from {hi['calibration_loss_start']:.2f} to {hi['calibration_loss']:.2f}" in page
    assert hi["beta"]["0"]["layer.0"] == 0.0 and "pruned model A's block 0" in page
