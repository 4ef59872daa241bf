"""framework.merging against mergekit's own functions, where mergekit is installed (it is not a dependency:
``pip install mergekit`` to run these). The merge step below is mergekit's generalized task arithmetic
(weights, sign consensus, optional normalisation, lambda) written out around its ``sparsify`` and
``get_mask``; DARE's masks agree because both draw torch.bernoulli from a CPU generator with the same seed."""

from __future__ import annotations

import pytest
import torch

from framework.merging import MergeSpec
from framework.merging.methods import merge_tensor
from framework.merging.task_vectors import tensor_generator

sparsify = pytest.importorskip("mergekit.sparsify")
gta = pytest.importorskip("mergekit.merge_methods.generalized_task_arithmetic")


def _mergekit(base, fts, weights, how, consensus, normalize, density, lam, seed):
    deltas = []
    for i, ft in enumerate(fts):
        d = ft - base
        if how == "magnitude":
            d = sparsify.magnitude(d, density, None)
        elif how == "random":
            torch.manual_seed(tensor_generator(seed, i, "t").initial_seed())
            d = sparsify.bernoulli(d, density, sparsify.RescaleNorm.l1)
        deltas.append(d)
    w = torch.tensor(weights).reshape(-1, *([1] * base.dim()))
    deltas = torch.stack(deltas) * w
    if consensus:
        mask = gta.get_mask(deltas, method="sum", mask_dtype=base.dtype)
        mixed, divisor = (deltas * mask).sum(0), (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = deltas.sum(0), w.sum(0)
    if normalize:
        mixed = mixed / divisor
    return base + lam * mixed


@pytest.mark.parametrize("method, how, consensus, normalize", [
    ("task_arithmetic", None, False, False), ("ties", "magnitude", True, True),
    ("dare", "random", False, False), ("dare_ties", "random", True, False)])
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_agrees_with_mergekit(method, how, consensus, normalize, density):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(33, 17, generator=g)
    fts = [base + torch.randn(33, 17, generator=g) for _ in range(3)]
    weights = [0.4, 1.0, 0.7]
    spec = MergeSpec(method, density=density if how else 1.0, lam=0.8, weights=weights, seed=3, dare_rescale="l1")
    ours = merge_tensor(base, fts, weights, spec, name="t")
    theirs = _mergekit(base, fts, weights, how, consensus, normalize, density, 0.8, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
