"""Task vectors and the operations the merging methods compose, on single tensors.

    tau = task_vector(finetuned, base)              # finetuned - base, in float32
    trimmed = trim_by_magnitude(tau, density=0.2)   # TIES: keep the top-k |entries|, k = max(1, int(density * numel))
    dropped = drop_and_rescale(tau, 0.2, rng)       # DARE: keep each entry with probability density, / density
    sign = elect_sign(torch.stack(weighted))        # TIES: the sign of the sum, per entry (0 elects +)
    agree = agreement_mask(torch.stack(weighted), sign)

These follow mergekit's definitions (``sparsify.magnitude``, ``sparsify.bernoulli`` with rescaling and
``get_mask(method="sum")`` of ``generalized_task_arithmetic``) so that results agree to float tolerance.
"""

from __future__ import annotations

import zlib

import torch

from framework.merging.errors import MergeError

COMPUTE_DTYPE = torch.float32


def task_vector(finetuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """tau = finetuned - base, computed in float32."""
    if finetuned.shape != base.shape:
        raise MergeError(f"task vector of shape {tuple(finetuned.shape)} against a base of shape {tuple(base.shape)}. "
                         "Fix: merge only fine-tunes of the same base model (same architecture and size)")
    return finetuned.to(COMPUTE_DTYPE) - base.to(COMPUTE_DTYPE)


def check_density(density: float) -> float:
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density={density} must be in (0, 1]: the fraction of each task vector's entries kept. "
                         "Fix: pass e.g. --density 0.5 (1.0 keeps every entry)")
    return density


def trim_by_magnitude(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, int(density * numel)) entries of largest magnitude, zero the rest (TIES's trim).

    density >= 1 keeps everything; any positive density keeps at least one entry (as mergekit does). Ties in
    magnitude are broken by torch.topk's order."""
    density = check_density(density)
    if density >= 1.0:
        return tau
    k = max(1, int(density * tau.numel()))
    flat = tau.reshape(-1)
    mask = torch.zeros_like(flat)
    if flat.numel() > 0:
        mask[torch.topk(flat.abs(), k=min(k, flat.numel()), largest=True).indices] = 1
    return (flat * mask).reshape(tau.shape)


def tensor_generator(seed: int, model_index: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, model index, tensor name): the drop mask of a tensor does not
    depend on the order in which tensors are visited, nor on PYTHONHASHSEED."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed((zlib.crc32(f"{int(seed)}:{model_index}:{name}".encode()) + (int(seed) << 32)) & 0x7FFF_FFFF_FFFF_FFFF)
    return gen


RESCALES = ("density", "l1")


def drop_and_rescale(tau: torch.Tensor, density: float, generator: torch.Generator,
                     rescale: str = "density") -> torch.Tensor:
    """DARE: keep each entry independently with probability density (drop rate p = 1 - density), then rescale
    what is kept: by 1 / density (``rescale="density"``, the DARE paper's 1 / (1 - p): the expectation equals
    tau), or so that the L1 norm equals tau's (``rescale="l1"``, what mergekit 0.1.5 does; no rescaling when
    either norm is below 1e-7). density 1 returns tau unchanged."""
    density = check_density(density)
    if rescale not in RESCALES:
        raise MergeError(f"unknown DARE rescaling {rescale!r}. Fix: use one of {', '.join(RESCALES)}")
    if density >= 1.0:
        return tau
    mask = torch.bernoulli(torch.full(tau.shape, density, dtype=COMPUTE_DTYPE), generator=generator)
    kept = tau * mask.to(tau.device)
    if rescale == "density":
        return kept / density
    before, after = tau.abs().sum(), kept.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * (before / after)


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """TIES's sign election over a stack [n_models, ...] of (weighted, trimmed) task vectors: +1 where the
    sum over models is >= 0, else -1 (a zero sum elects +, as mergekit does)."""
    return torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)


def agreement_mask(weighted: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """1 where a model's entry is non-zero and has the elected sign, else 0 (trimmed entries never agree)."""
    return (torch.sign(weighted) == sign.unsqueeze(0)).to(weighted.dtype)


def disjoint_mean(trimmed: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * m_i * tau_i / sum_i w_i * m_i per entry, where m_i is the agreement mask; entries no
    model agrees on (denominator 0) get 0. With all w_i = 1 this is the plain mean over the models that agree."""
    w = weights.reshape(-1, *([1] * (trimmed.dim() - 1))).to(trimmed.dtype)
    numerator = (trimmed * w * mask).sum(dim=0)
    denominator = (w * mask).sum(dim=0)
    denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return numerator / denominator
