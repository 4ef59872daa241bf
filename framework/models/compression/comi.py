"""COMI's compression operator: Marginal Information Gain (MIG) = relevance to the query minus
redundancy with other units, applied coarse-to-fine (methods.md §2 "COMI", §2.3 "The MIG formulas").

    sizes = reallocate_group_sizes(hidden, query_mean, ratio)   # coarse: tokens per output slot
    memory = merge_groups(hidden, query_mean, sizes)            # fine: one vector per group
    memory = comi_compress(hidden, query_mean, ratio)           # both steps, [<= ceil(n/ratio), d]

`hidden` [n, d] holds one sample's context token states (valid tokens only), `query_mean` [d] the
mean of its query token states. Everything here is parameter-free apart from the MIG weights
`alpha` and `beta` (floats, or scalar tensors when they are learnt). Group sizes are discrete and
carry no gradient; the merged vectors are differentiable w.r.t. `hidden` (and `query_mean`).

Coarse step: cut the n tokens into G = ceil(n/ratio) fixed groups; a group's MIG is
alpha * (its best token's cosine to the query) - beta * (max cosine of that token to the other
groups' best tokens). Group sizes become n * softmax(-MIG), rounded by largest remainder, so
relevant, non-redundant groups are compressed more gently. Zero-size groups are dropped.
Fine step: inside each group, token score alpha * cos(h_i, q) - beta * max_{j != i} cos(h_i, h_j),
softmax over the group, weighted sum. With fine=False the groups are mean-pooled (GMSA).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

EPS = 1e-8
# Most elements a [groups, max_size, max_size] within-group cosine tensor may hold at once; groups
# are merged in chunks of similar size below this bound.
PAIRWISE_BUDGET = 1 << 24


def num_slots(n: int, ratio: int) -> int:
    """Output vectors for n tokens at compression `ratio`: ceil(n / ratio)."""
    _check_ratio(ratio)
    if n < 0:
        raise ValueError(f"n={n} tokens must be >= 0")
    return -(-n // ratio)


def fixed_group_sizes(n: int, ratio: int) -> torch.LongTensor:
    """ceil(n/ratio) consecutive groups of `ratio` tokens; the last one holds the remainder."""
    g = num_slots(n, ratio)
    sizes = torch.full((g,), ratio, dtype=torch.long)
    if g:
        sizes[-1] = n - ratio * (g - 1)
    return sizes


def largest_remainder_round(values: torch.Tensor, total: int) -> torch.LongTensor:
    """Round non-negative `values` (summing to `total` up to float error) to integers summing to
    `total` exactly: floor everything, then give +1 to the largest fractional parts (ties: lower
    index first)."""
    values = values.double()
    floors = values.floor()
    short = total - int(floors.sum().item())
    short = max(0, min(short, values.numel()))
    order = torch.argsort(values - floors, descending=True, stable=True)
    sizes = floors.long()
    sizes[order[:short]] += 1
    return sizes


def group_mig(hidden: torch.Tensor, query_mean: torch.Tensor, ratio: int, alpha=1.0, beta=1.0,
              redundancy: bool = True) -> torch.Tensor:
    """MIG of each of the ceil(n/ratio) fixed groups, [G]: alpha * R_k - beta * D_k, where R_k is the
    best cosine of a group token to the query and D_k the max cosine of that representative token
    to the other groups' representatives (0 for a single group; dropped with redundancy=False)."""
    _check_inputs(hidden, query_mean)
    n = hidden.shape[0]
    g = num_slots(n, ratio)
    rel = _unit(hidden) @ _unit(query_mean.to(hidden.dtype))            # [n]
    padded = F.pad(rel, (0, g * ratio - n), value=float("-inf")).view(g, ratio)
    best, pos = padded.max(dim=1)                                       # first max wins ties
    mig = alpha * best
    if redundancy and g > 1:
        reps = _unit(hidden[torch.arange(g, device=hidden.device) * ratio + pos])
        sim = (reps @ reps.T).masked_fill(torch.eye(g, dtype=torch.bool, device=hidden.device), float("-inf"))
        mig = mig - beta * sim.max(dim=1).values
    return mig


def reallocate_group_sizes(hidden: torch.Tensor, query_mean: torch.Tensor, ratio: int, alpha=1.0, beta=1.0,
                           redundancy: bool = True) -> torch.LongTensor:
    """COMI's coarse step: tokens per group, n * softmax(-MIG) rounded by largest remainder, zero-size
    groups dropped (order kept). All sizes are >= 1 and sum to n; at most ceil(n/ratio) groups."""
    n = hidden.shape[0]
    if n == 0:
        _check_inputs(hidden, query_mean)
        _check_ratio(ratio)
        return torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        mig = group_mig(hidden, query_mean, ratio, alpha, beta, redundancy)
        sizes = largest_remainder_round(n * torch.softmax(-mig.double(), dim=0), n)
    return sizes[sizes > 0].cpu()


def merge_groups(hidden: torch.Tensor, query_mean: torch.Tensor, sizes, alpha=1.0, beta=1.0, fine: bool = True,
                 redundancy: bool = True) -> torch.Tensor:
    """COMI's fine step: cut `hidden` contiguously by `sizes` and merge each group into one vector,
    [len(sizes), d]. Token score m_i = alpha * cos(h_i, q) - beta * max_{j != i in group} cos(h_i, h_j)
    (no redundancy term for a singleton, none at all with redundancy=False); weights softmax(m) in
    the group. fine=False gives the plain mean of each group."""
    _check_inputs(hidden, query_mean)
    n, d = hidden.shape
    sizes = torch.as_tensor(sizes, dtype=torch.long).cpu()
    if sizes.dim() != 1 or (sizes < 1).any() or int(sizes.sum()) != n:
        raise ValueError(f"sizes must be a 1-D list of positive group sizes summing to n={n}; got {sizes.tolist()}")
    if len(sizes) == 0:
        return hidden.new_zeros(0, d)
    starts = torch.cumsum(sizes, 0) - sizes
    if not fine:
        group = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(hidden.device)
        total = hidden.new_zeros(len(sizes), d).index_add(0, group, hidden)
        return total / sizes.to(device=hidden.device, dtype=hidden.dtype)[:, None]
    rel = _unit(hidden) @ _unit(query_mean.to(hidden.dtype))            # [n]
    chunks = list(_size_chunks(sizes))
    merged = torch.cat([_merge_chunk(hidden, rel, starts[c], sizes[c], alpha, beta, redundancy) for c in chunks])
    inverse = torch.argsort(torch.cat(chunks)).to(hidden.device)
    return merged[inverse]


def comi_compress(hidden: torch.Tensor, query_mean: torch.Tensor, ratio: int, alpha=1.0, beta=1.0,
                  coarse: bool = True, fine: bool = True, redundancy: bool = True,
                  merge_alpha=None, merge_beta=None) -> torch.Tensor:
    """The whole COMI operator for one sample: [num_groups, d], num_groups <= ceil(n/ratio).
    coarse=False keeps fixed groups of `ratio`; coarse=False, fine=False is mean pooling of them.
    alpha/beta weigh the coarse step, and the fine step unless merge_alpha/merge_beta are given."""
    if coarse:
        sizes = reallocate_group_sizes(hidden, query_mean, ratio, alpha, beta, redundancy)
    else:
        sizes = fixed_group_sizes(hidden.shape[0], ratio)
    return merge_groups(hidden, query_mean, sizes, alpha if merge_alpha is None else merge_alpha,
                        beta if merge_beta is None else merge_beta, fine=fine, redundancy=redundancy)


def _merge_chunk(hidden, rel, starts, sizes, alpha, beta, redundancy):
    """MIG-weighted merge of groups padded into [c, m, d] (m = largest size in the chunk)."""
    m = int(sizes.max())
    offs = torch.arange(m)
    valid = offs[None, :] < sizes[:, None]                               # [c, m]
    idx = torch.where(valid, starts[:, None] + offs[None, :], 0)
    valid, idx = valid.to(hidden.device), idx.to(hidden.device)
    h = hidden[idx]                                                      # [c, m, d]
    score = alpha * rel[idx]
    if redundancy:
        u = _unit(h)
        sim = u @ u.transpose(1, 2)                                      # [c, m, m]
        pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(m, dtype=torch.bool, device=hidden.device)
        worst = sim.masked_fill(~pair, float("-inf")).max(dim=2).values
        score = score - beta * torch.where(pair.any(dim=2), worst, torch.zeros_like(worst))
    w = torch.softmax(score.masked_fill(~valid, float("-inf")), dim=1)
    return (w[:, :, None] * h).sum(dim=1)


def _size_chunks(sizes: torch.LongTensor):
    """Group indices in chunks of similar size whose padded pairwise tensor fits PAIRWISE_BUDGET."""
    order = torch.argsort(sizes, stable=True)
    sorted_sizes = sizes[order].tolist()
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or (i - start + 1) * sorted_sizes[i] ** 2 > PAIRWISE_BUDGET:
            yield order[start:i]
            start = i


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=EPS)


def _check_ratio(ratio) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Integral) or ratio < 1:
        raise ValueError(f"ratio={ratio!r} must be a positive int (tokens per output vector), e.g. 16")


def _check_inputs(hidden: torch.Tensor, query_mean: torch.Tensor) -> None:
    if hidden.dim() != 2 or query_mean.dim() != 1 or hidden.shape[1] != query_mean.shape[0]:
        raise ValueError(f"hidden must be [n, d] and query_mean [d]; got {tuple(hidden.shape)} and "
                         f"{tuple(query_mean.shape)}. Fix: pass one sample's valid context states and the mean "
                         "of its query states")

