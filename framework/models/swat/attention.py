"""SWAT attention: per-head slopes, RoPE helpers and the blocked banded attention.

For head h, query position m and key position n with m - window < n <= m (paper Eqs. 2-5):

    score(m, n) = RoPE(q_m) . RoPE(k_n) / sqrt(d) + s_h * (m - n)
    out_m       = sum_n sigmoid(score(m, n)) * v_n            normalization="sigmoid" (no normaliser)
    out_m       = sum_n softmax_n(score(m, n)) * v_n          normalization="softmax" (the ablation)

`banded_attention` computes this without ever building an N x N score matrix: queries go in
blocks of `block_size`, and a block [s, e) only scores keys [s - window + 1, e). Time and memory
are O(N * (block_size + window)), i.e. linear in the sequence length.
"""

from __future__ import annotations

import torch

from .configuration import SLOPE_MODES, SWATConfigError


def swat_slopes(num_heads: int, mode: str = "balanced") -> torch.Tensor:
    """Per-head slopes s_h of the linear position bias s_h * (m - n), as a float32 tensor (num_heads,).

    "balanced" (paper Eq. 4, SWAT(-+)): the first H/2 heads get s_k = -2^(-k) and the last H/2 heads
        get s_k = +2^(-k), k = 1 ... H/2 in each half. Negative slopes penalise distance (recency,
        like ALiBi); positive slopes reward distance inside the window (keep older context).
    "negative" (SWAT(-)): s_k = -2^(-k), k = 1 ... H.
    "positive" (SWAT(+)): s_k = +2^(-k), k = 1 ... H.
    "none": all zeros (no position bias beyond RoPE).

    Example: swat_slopes(4) -> [-0.5, -0.25, 0.5, 0.25].
    """
    if mode not in SLOPE_MODES:
        raise SWATConfigError(f"slopes={mode!r}: must be one of {SLOPE_MODES}. Fix: pick one of those.")
    if num_heads <= 0:
        raise SWATConfigError(f"num_heads={num_heads}: must be positive. Fix: pass the model's head count.")
    if mode == "none":
        return torch.zeros(num_heads)
    if mode == "balanced":
        if num_heads % 2:
            raise SWATConfigError(
                f"num_heads={num_heads}: balanced slopes need an even head count (half negative, half positive). "
                'Fix: use an even number of heads or slopes="negative".'
            )
        half = 2.0 ** -torch.arange(1, num_heads // 2 + 1, dtype=torch.float64)
        return torch.cat([-half, half]).float()
    magnitudes = 2.0 ** -torch.arange(1, num_heads + 1, dtype=torch.float64)
    return (-magnitudes if mode == "negative" else magnitudes).float()


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sin of the RoPE angles for integer `positions` (N,) or (B, N).

    Returns two tensors (B or 1, 1, N, head_dim) in `dtype`, ready to broadcast over heads. The
    angles are computed in float64, so a position gets the same angle whether it is computed in a
    full forward pass or while decoding far past the window.
    """
    if positions.ndim == 1:
        positions = positions[None]
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (B, N, d/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, N, d)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, d) queries or keys by their positions' angles (half-split convention)."""
    return x * cos + rotate_half(x) * sin


def banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    window: int,
    normalization: str = "sigmoid",
    block_size: int | None = None,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SWAT attention over a causal window, computed block by block.

    q: (B, H, Nq, d) queries, already rotated by RoPE if used.
    k, v: (B, H, Nk, d) keys/values with Nk >= Nq. The queries are the *last* Nq positions of the
        keys: query i sits at key index Nk - Nq + i (Nk > Nq when earlier keys come from a cache).
    slopes: (H,) per-head s_h; the bias added to a score is s_h * (m - n), m - n in 0 ... window-1.
    window: query m sees keys n with m - window < n <= m.
    normalization: "sigmoid" (independent weights, no normaliser) or "softmax" (over the window).
    block_size: queries per block (default `window`); results do not depend on it.
    key_mask: optional (B, Nk) bool, False for keys to ignore (left padding). A query that sees no
        valid key at all gets a zero output (no NaN), under either normalization.

    Returns (B, H, Nq, d_v) in v's dtype. Scores are formed in at least float32.
    """
    if normalization not in ("sigmoid", "softmax"):
        raise SWATConfigError(f'normalization={normalization!r}: must be "sigmoid" or "softmax". Fix: pick one.')
    n_q, n_k = q.shape[-2], k.shape[-2]
    if n_k < n_q:
        raise ValueError(f"banded_attention got {n_q} queries but only {n_k} keys; the queries must be the last "
                         "keys. Fix: concatenate cached keys in front of the new ones.")
    block = block_size or window
    offset = n_k - n_q
    compute = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5
    slopes = slopes.to(device=q.device, dtype=compute)[:, None, None]  # (H, 1, 1)
    outputs = []
    for start in range(0, n_q, block):
        stop = min(start + block, n_q)
        k_start = max(0, offset + start - window + 1)
        k_stop = offset + stop
        q_block = q[..., start:stop, :].to(compute)
        scores = torch.matmul(q_block, k[..., k_start:k_stop, :].to(compute).transpose(-1, -2))
        q_pos = torch.arange(offset + start, offset + stop, device=q.device)
        k_pos = torch.arange(k_start, k_stop, device=q.device)
        dist = q_pos[:, None] - k_pos[None, :]  # m - n, (bq, bk)
        scores = scores * scale + slopes * dist.to(compute)
        allowed = ((dist >= 0) & (dist < window))[None, None]  # (1, 1, bq, bk)
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, k_start:k_stop].bool()
        if normalization == "sigmoid":
            weights = torch.where(allowed, torch.sigmoid(scores), 0.0)
        else:
            weights = torch.softmax(scores.masked_fill(~allowed, torch.finfo(compute).min), dim=-1)
            weights = weights.masked_fill(~allowed, 0.0)  # rows with no valid key give 0, not uniform
        outputs.append(torch.matmul(weights.to(v.dtype), v[..., k_start:k_stop, :]))
    if not outputs:
        return v.new_zeros(*q.shape[:-1], v.shape[-1])
    return torch.cat(outputs, dim=-2)
