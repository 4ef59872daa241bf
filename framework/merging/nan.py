"""NAN: merging coefficients from the inverse of each model's parameter norm (Si et al., 2025,
"NAN: A Training-Free Solution to Coefficient Estimation in Model Merging").

    c_i = (1 / ||tau_i||) / sum_j (1 / ||tau_j||)          (sum_i c_i = 1)

||.|| is the Frobenius norm of the task vector tau_i = theta_i - theta_base (``norm="task_vector"``, the
default) or of the fine-tuned weights theta_i (``norm="weights"``), taken over the whole model
(``scope="global"``: one coefficient per model) or per tensor (``scope="per_tensor"``: one per model and
tensor). The coefficients become the per-model weights w_i of any base method (``nan+ties`` ...).

Why the inverse norm (the least-squares view, docs/merging.md): merging linear maps W_i, each fit on its
own data X_i, by minimising sum_i ||X_i W - X_i W_i||^2 gives W = (sum_i X_i^T X_i)^-1 sum_i X_i^T X_i W_i,
a weighting of each model by the information (data volume) behind it. With X_i^T X_i ~ n_i I the weights
are n_i / sum_j n_j; NAN estimates n_i without data, by the inverse parameter norm: a model fit on more
data has a smaller, better-conditioned update.

A model whose norm is 0 in a tensor (it left that tensor at the base) gets coefficient 0 there and is left
out of that tensor's normalisation; if every model has norm 0 there, all get 1/n (the tensor is the base
anyway). A model with a global task-vector norm of 0 is an error: it is the base itself.
"""

from __future__ import annotations

import math

import torch

from framework.merging.errors import MergeError
from framework.merging.task_vectors import COMPUTE_DTYPE


def inverse_norm_coefficients(norms) -> list[float]:
    """c_i = (1/n_i) / sum_j (1/n_j) over the non-zero norms; zero norms get 0; all zero: 1/len each."""
    norms = [float(n) for n in norms]
    if not norms:
        raise MergeError("no norms to turn into NAN coefficients. Fix: pass at least one fine-tuned model")
    if any(not math.isfinite(n) or n < 0 for n in norms):
        raise MergeError(f"parameter norms {norms} must be finite and non-negative. Fix: check the models for "
                         "NaN or infinite weights")
    inverse = [1.0 / n if n > 0 else 0.0 for n in norms]
    total = sum(inverse)
    if total == 0:
        return [1.0 / len(norms)] * len(norms)
    return [v / total for v in inverse]


def tensor_norms(base: torch.Tensor, finetuned: list[torch.Tensor], norm: str = "task_vector") -> list[float]:
    """||theta_i - theta_base|| (norm="task_vector") or ||theta_i|| (norm="weights") of one tensor, per model."""
    if norm == "task_vector":
        return [float(torch.linalg.vector_norm(ft.to(COMPUTE_DTYPE) - base.to(COMPUTE_DTYPE))) for ft in finetuned]
    if norm == "weights":
        return [float(torch.linalg.vector_norm(ft.to(COMPUTE_DTYPE))) for ft in finetuned]
    raise MergeError(f"unknown NAN norm {norm!r}. Fix: use 'task_vector' or 'weights'")


def global_norms(base_ckpt, model_ckpts, names, norm: str = "task_vector") -> list[float]:
    """The whole-model norm of each model (sqrt of the sum over tensors of the squared tensor norms),
    reading one tensor name at a time. Integer tensors are skipped."""
    squares = [0.0] * len(model_ckpts)
    for name in names:
        base = base_ckpt.get(name)
        if not base.is_floating_point():
            continue
        for i, n in enumerate(tensor_norms(base, [m.get(name) for m in model_ckpts], norm)):
            squares[i] += n * n
    return [math.sqrt(s) for s in squares]


def global_coefficients(base_ckpt, model_ckpts, names, norm: str = "task_vector",
                        labels: list[str] | None = None) -> tuple[list[float], list[float]]:
    """(coefficients, norms) over the whole model; an error names a model identical to the base."""
    norms = global_norms(base_ckpt, model_ckpts, names, norm)
    for i, n in enumerate(norms):
        if n == 0 and norm == "task_vector":
            label = labels[i] if labels else f"model {i}"
            raise MergeError(f"{label} is identical to the base (its task vector has norm 0), so NAN cannot weight "
                             "it. Fix: drop it from the merge, or check that you passed the fine-tuned model and "
                             "not the base")
    return inverse_norm_coefficients(norms), norms
