"""The merging methods, one tensor at a time, and the spec that names one.

With tau_i = theta_i - theta_base the task vector of model i, w_i its weight (1 unless given, or NAN's
coefficient) and lambda the scale:

    task_arithmetic  theta = base + lambda * sum_i w_i tau_i
    ties             trim each tau_i to its top max(1, int(density * numel)) magnitudes (t_i); elect the sign
                     s = sign(sum_i w_i t_i) per entry (0 -> +); keep the entries of w_i t_i whose sign is s;
                     theta = base + lambda * sum_i w_i m_i t_i / sum_i w_i m_i   (disjoint mean)
    dare             d_i = Bernoulli(density) mask * tau_i / density (seeded, per model and tensor);
                     theta = base + lambda * sum_i w_i d_i
    dare_ties        d_i as in dare, then TIES's sign election; theta = base + lambda * sum_i w_i m_i d_i
                     (the agreeing entries are summed, not averaged: mergekit's dare_ties default)
    nan+<method>     <method> with w_i from framework.merging.nan (inverse task-vector norms, summing to 1)

These are mergekit's ``task_arithmetic``, ``ties``, ``dare_linear`` and ``dare_ties`` (its
generalized task arithmetic, with ``normalize`` on for TIES only, as mergekit's defaults). DARE rescales the
kept entries by 1 / density (the paper) unless ``dare_rescale="l1"`` (mergekit 0.1.5's L1-norm matching).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from framework.merging.errors import MergeError
from framework.merging.task_vectors import (COMPUTE_DTYPE, RESCALES, agreement_mask, check_density,
                                            disjoint_mean, drop_and_rescale, elect_sign, tensor_generator,
                                            task_vector, trim_by_magnitude)

# method -> (sparsification, sign election, divide by the agreeing weights (disjoint mean))
BASE_METHODS = {
    "task_arithmetic": (None, False, False),
    "ties": ("magnitude", True, True),
    "dare": ("random", False, False),
    "dare_ties": ("random", True, False),
}
NAN_PREFIX = "nan+"
CALIBRATED_METHODS = ("hi_merging",)
METHODS = (tuple(BASE_METHODS) + tuple(NAN_PREFIX + m for m in BASE_METHODS) + CALIBRATED_METHODS)
NAN_SCOPES = ("global", "per_tensor")
NAN_NORMS = ("task_vector", "weights")


@dataclass
class MergeSpec:
    """What to merge and how. method: one of METHODS. density: the fraction of each task vector kept
    (TIES's top-k, DARE's keep probability 1 - p). lam: lambda, the scale of the merged task vector.
    seed: DARE's drop masks. weights: one per model (default 1 each; replaced by NAN's coefficients for
    nan+ methods). nan_scope: NAN's norms over the whole model ("global") or per tensor.
    nan_norm: the norm NAN inverts: of the task vector (default) or of the fine-tuned weights.
    dare_rescale: "density" (divide the kept entries by density) or "l1" (match the L1 norm, as mergekit)."""

    method: str = "task_arithmetic"
    density: float = 1.0
    lam: float = 1.0
    seed: int = 0
    weights: list[float] | None = None
    nan_scope: str = "global"
    nan_norm: str = "task_vector"
    dare_rescale: str = "density"
    extra: dict = field(default_factory=dict)

    @property
    def uses_nan(self) -> bool:
        return self.method.startswith(NAN_PREFIX)

    @property
    def base_method(self) -> str:
        return self.method[len(NAN_PREFIX):] if self.uses_nan else self.method

    def validate(self, n_models: int) -> "MergeSpec":
        if self.method not in METHODS:
            raise MergeError(f"unknown merge method {self.method!r}. Fix: use one of {', '.join(METHODS)}")
        if n_models < 1:
            raise MergeError("no models to merge. Fix: pass at least one fine-tuned model after --base")
        if self.base_method in ("ties", "dare", "dare_ties"):
            check_density(self.density)
        elif self.density != 1.0 and self.base_method in ("task_arithmetic", "hi_merging"):
            raise MergeError(f"density={self.density} has no effect on {self.base_method}. Fix: drop --density, or "
                             "use ties or dare to sparsify the task vectors")
        if not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam) or self.lam == 0:
            raise MergeError(f"lambda={self.lam} must be a finite, non-zero number (1.0 adds the merged task "
                             "vector once). Fix: pass e.g. --lambda 1.0")
        if self.weights is not None:
            if self.uses_nan:
                raise MergeError(f"{self.method} computes its own weights (NAN coefficients). Fix: drop --weights, "
                                 f"or use {self.base_method} with --weights")
            if len(self.weights) != n_models:
                raise MergeError(f"{len(self.weights)} weights for {n_models} models. Fix: pass one weight per "
                                 "fine-tuned model, in the same order")
            if not all(math.isfinite(w) for w in self.weights):
                raise MergeError(f"weights {self.weights} must be finite numbers. Fix: pass e.g. --weights 0.5,0.5")
            if BASE_METHODS.get(self.base_method, (None, False, False))[2] and any(w <= 0 for w in self.weights):
                raise MergeError(f"weights {self.weights}: {self.base_method} takes a weighted mean, so every weight "
                                 "must be positive. Fix: pass positive weights, or drop a model instead of "
                                 "weighting it by 0")
        if self.nan_scope not in NAN_SCOPES:
            raise MergeError(f"nan_scope={self.nan_scope!r}. Fix: use one of {', '.join(NAN_SCOPES)}")
        if self.nan_norm not in NAN_NORMS:
            raise MergeError(f"nan_norm={self.nan_norm!r}. Fix: use one of {', '.join(NAN_NORMS)}")
        if self.dare_rescale not in RESCALES:
            raise MergeError(f"dare_rescale={self.dare_rescale!r}. Fix: use one of {', '.join(RESCALES)}")
        return self


def sparsify(tau: torch.Tensor, how: str | None, density: float, generator: torch.Generator | None,
             rescale: str = "density") -> torch.Tensor:
    if how is None:
        return tau
    if how == "magnitude":
        return trim_by_magnitude(tau, density)
    if how == "random":
        return drop_and_rescale(tau, density, generator, rescale)
    raise MergeError(f"unknown sparsification {how!r}. Fix: use 'magnitude' or 'random'")


def merge_task_vectors(taus: list[torch.Tensor], weights: torch.Tensor, method: str, *, density: float = 1.0,
                       seed: int = 0, name: str = "", dare_rescale: str = "density") -> torch.Tensor:
    """The merged task vector (before lambda) of one tensor under `method` (a key of BASE_METHODS)."""
    if method not in BASE_METHODS:
        raise MergeError(f"unknown merge method {method!r}. Fix: use one of {', '.join(BASE_METHODS)}")
    how, consensus, normalize = BASE_METHODS[method]
    sparse = torch.stack([sparsify(tau, how, density, tensor_generator(seed, i, name) if how == "random" else None,
                                   dare_rescale) for i, tau in enumerate(taus)])
    w = weights.to(COMPUTE_DTYPE).reshape(-1, *([1] * (sparse.dim() - 1)))
    weighted = sparse * w
    if not consensus:
        return weighted.sum(dim=0)
    mask = agreement_mask(weighted, elect_sign(weighted))
    if normalize:
        return disjoint_mean(sparse, weights.to(COMPUTE_DTYPE), mask)
    return (weighted * mask).sum(dim=0)


def merge_tensor(base: torch.Tensor, finetuned: list[torch.Tensor], weights, spec: MergeSpec,
                 name: str = "") -> torch.Tensor:
    """theta_base + lambda * merged task vector, returned in the base tensor's dtype. Tensors that are not
    floating point (integer buffers) are taken from the base unchanged."""
    if not base.is_floating_point():
        return base
    taus = [task_vector(ft, base) for ft in finetuned]
    w = torch.as_tensor(weights, dtype=COMPUTE_DTYPE)
    merged = merge_task_vectors(taus, w, spec.base_method, density=spec.density, seed=spec.seed, name=name,
                                dare_rescale=spec.dare_rescale)
    return (base.to(COMPUTE_DTYPE) + spec.lam * merged).to(base.dtype)
