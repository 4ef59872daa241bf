"""RAM's parameter-free operations (methods.md §1 "RAM", §1.1 "Architecture", §1.2 "Losses and
training").

RAM cuts the context into fixed-length segments and encodes each one (and the query) on its own.
Pooled vectors (masked means) rank the segments by cosine to the query: the top
k = floor(rho * N) are "close read" (kept as raw tokens), every other segment is "skimmed" into one
vector, the sum of its token states weighted by softmax(cos(h_t, query)). A multi-positive InfoNCE
loss pulls the query vector toward the segments annotated as relevant.

    bounds = segment_bounds(n, 50)                     # [(0, 50), (50, 100), ...]
    keep = select_segments(scores, keep_fraction)      # indices, in original order
    vec = skim_vector(seg_hidden, seg_mask, query_vec) # one vector for a skimmed segment
    loss = contrastive_loss(query_vecs, segment_vecs, segment_mask, positive)

Compression accounting: N segments of L tokens become k * L + (N - k) positions
(`effective_ratio`); `nominal_ratio` is the same for large N, and `keep_fraction_for_ratio`
inverts it to pick rho for a target ratio.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8


def segment_bounds(n: int, segment_size: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) segments of `segment_size` tokens covering n tokens; the last may be shorter."""
    if segment_size < 1 or n < 0:
        raise ValueError(f"need segment_size >= 1 and n >= 0; got segment_size={segment_size}, n={n}")
    return [(s, min(s + segment_size, n)) for s in range(0, n, segment_size)]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions: hidden [B, T, d], mask [B, T] bool -> [B, d] (zeros for a row with no valid token)."""
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)


def keep_count(num_segments: int, keep_fraction: float) -> int:
    """Segments kept as raw tokens: floor(rho * N), robust to float error, clamped to [0, N]."""
    return max(0, min(num_segments, math.floor(keep_fraction * num_segments + 1e-9)))


def select_segments(scores: torch.Tensor, keep_fraction: float) -> torch.LongTensor:
    """Indices of the keep_count(N, rho) highest-scoring segments, sorted ascending (original order)."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be [N]; got {tuple(scores.shape)}")
    k = keep_count(scores.numel(), keep_fraction)
    return torch.sort(torch.topk(scores.detach(), k).indices).values


def skim_weights(hidden: torch.Tensor, mask: torch.Tensor, query_mean: torch.Tensor) -> torch.Tensor:
    """softmax over the valid tokens of cos(h_t, query): hidden [..., T, d], mask [..., T] bool,
    query_mean [..., d] -> [..., T], 0 on padding, summing to 1 (all zeros if no token is valid).
    Leading dimensions batch many segments at once."""
    cos = (_unit(hidden) * _unit(query_mean.to(hidden.dtype)).unsqueeze(-2)).sum(-1)
    w = torch.softmax(cos.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.where(mask, w, torch.zeros_like(w))


def skim_vector(hidden: torch.Tensor, mask: torch.Tensor, query_mean: torch.Tensor) -> torch.Tensor:
    """A skimmed segment's single vector, [..., d] = sum_t w_t h_t with w = skim_weights."""
    return (skim_weights(hidden, mask, query_mean).unsqueeze(-1) * hidden).sum(-2)


def contrastive_loss(query_vecs: torch.Tensor, segment_vecs: torch.Tensor, segment_mask: torch.Tensor,
                     positive: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """Multi-positive InfoNCE with the query as anchor. s_i = cos(q, r_i) / tau; per sample
    -log(sum_{i in P} exp(s_i) / sum_{valid i} exp(s_i)), averaged over samples with a (valid)
    positive; a graph-connected zero when none has one.

    query_vecs [B, d], segment_vecs [B, N, d], segment_mask [B, N] bool, positive [B, N] bool."""
    s = (_unit(segment_vecs) @ _unit(query_vecs.to(segment_vecs.dtype))[:, :, None]).squeeze(-1) / tau     # [B, N]
    pos = positive & segment_mask
    has = pos.any(dim=1)                                                             # [B]
    if s.shape[1] == 0 or not bool(has.any()):
        return 0 * s.sum()
    # rows without a positive use the same mask above and below (loss 0, excluded), keeping gradients finite
    num_mask = torch.where(has[:, None], pos, torch.ones_like(pos))
    den_mask = torch.where(has[:, None], segment_mask, torch.ones_like(pos))
    neg_inf = float("-inf")
    per = torch.logsumexp(s.masked_fill(~den_mask, neg_inf), 1) - torch.logsumexp(s.masked_fill(~num_mask, neg_inf), 1)
    return (per * has).sum() / has.sum()


def effective_ratio(num_segments: int, segment_size: int, keep_fraction: float) -> float:
    """Exact ratio for N full segments: N * L / (k * L + (N - k)), k = keep_count(N, rho)."""
    if num_segments < 1 or segment_size < 1:
        raise ValueError(f"need num_segments >= 1 and segment_size >= 1; got {num_segments}, {segment_size}")
    k = keep_count(num_segments, keep_fraction)
    return num_segments * segment_size / (k * segment_size + (num_segments - k))


def nominal_ratio(segment_size: int, keep_fraction: float) -> float:
    """Large-N ratio: L / (L * rho + (1 - rho))."""
    if segment_size < 1 or not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"need segment_size >= 1 and 0 <= keep_fraction <= 1; got {segment_size}, {keep_fraction}")
    return segment_size / (segment_size * keep_fraction + (1.0 - keep_fraction))


def keep_fraction_for_ratio(ratio: float, segment_size: int) -> float:
    """The rho whose nominal_ratio is `ratio`: (L / ratio - 1) / (L - 1), clamped to [0, 1].
    ratio <= 1 gives 1.0 (keep everything); ratio >= L gives 0.0 (skim everything)."""
    if segment_size < 1 or ratio <= 0:
        raise ValueError(f"need segment_size >= 1 and ratio > 0; got {segment_size}, {ratio}")
    if ratio <= 1:
        return 1.0
    if ratio >= segment_size:
        return 0.0
    return min(1.0, max(0.0, (segment_size / ratio - 1.0) / (segment_size - 1.0)))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=EPS)
