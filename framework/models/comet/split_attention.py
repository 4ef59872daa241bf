"""Exact attention without a mask, for segments whose rows see every earlier key and each other causally.

In a chunk with no padding, one document and no sliding window that cuts, a segment's row sees every key
before the segment (memory rows, the chunk's earlier rows) and the segment's keys up to itself. That is two
pieces: the earlier keys with no mask, and the segment's own keys under a plain causal mask (as many queries
as keys). Each piece runs through the fused CPU flash kernel, which also returns each row's log-sum-exp, and
the pieces merge exactly:

    lse = logaddexp(lse_1, lse_2),    out = exp(lse_1 - lse) * out_1 + exp(lse_2 - lse) * out_2

No (rows x keys) mask is built, and the causal piece skips the blocks above its diagonal. The backward pass
runs the kernel's own backward on each piece with the *merged* output and log-sum-exp, which is exactly the
gradient of attention over all the keys at once (the softmax statistics are those of the whole row).
"""

from __future__ import annotations

import torch

_FORWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def split_available(device: torch.device | str) -> bool:
    """Whether `split_attention` runs on this device (the fused kernel with log-sum-exp is the CPU one)."""
    return torch.device(device).type == "cpu"


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Attention over two disjoint key sets, from each set's output (B, H, L, D) and log-sum-exp (B, H, L): the
    (output, log-sum-exp) over their union, merged in fp32 at least (fp64 stays fp64)."""
    lse = torch.logaddexp(lse_a, lse_b)
    wide = torch.promote_types(out_a.dtype, torch.float32)
    out = (out_a.to(wide) * (lse_a - lse).exp().unsqueeze(-1)
           + out_b.to(wide) * (lse_b - lse).exp().unsqueeze(-1)).to(out_a.dtype)
    return out, lse


class _PrefixCausal(torch.autograd.Function):
    """Attention of q (B, H, L, D) over k/v (B, H, P + L, D): the first P keys unmasked, the last L causal."""

    @staticmethod
    def forward(ctx, q, k, v, n_prefix: int, scale: float):
        if n_prefix == 0:
            out, lse = _FORWARD(q, k, v, 0.0, True, scale=scale)
        else:
            out_p, lse_p = _FORWARD(q, k[:, :, :n_prefix], v[:, :, :n_prefix], 0.0, False, scale=scale)
            out_c, lse_c = _FORWARD(q, k[:, :, n_prefix:], v[:, :, n_prefix:], 0.0, True, scale=scale)
            out, lse = merge(out_p, lse_p, out_c, lse_c)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.n_prefix, ctx.scale = n_prefix, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        n, scale = ctx.n_prefix, ctx.scale
        grad_out = grad_out.contiguous()
        if n == 0:
            dq, dk, dv = _BACKWARD(grad_out, q, k, v, out, lse, 0.0, True, scale=scale)
            return dq, dk, dv, None, None
        dq_p, dk_p, dv_p = _BACKWARD(grad_out, q, k[:, :, :n], v[:, :, :n], out, lse, 0.0, False, scale=scale)
        dq_c, dk_c, dv_c = _BACKWARD(grad_out, q, k[:, :, n:], v[:, :, n:], out, lse, 0.0, True, scale=scale)
        return dq_p + dq_c, torch.cat([dk_p, dk_c], dim=2), torch.cat([dv_p, dv_c], dim=2), None, None


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, kv_heads, S, D) -> (B, kv_heads * groups, S, D), each kv head serving `groups` query heads."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


_NATIVE_GQA: list = []  # [True/False] once known: the kernel takes fewer key/value heads than query heads


def _native_gqa() -> bool:
    """Whether the fused kernel serves query head h from key/value head h // groups itself (no repeated copy of
    the keys and values); checked once against the repeated form."""
    if not _NATIVE_GQA:
        q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8)
        try:
            ok = torch.equal(_FORWARD(q, k, k, 0.0, False)[0], _FORWARD(q, _repeat_heads(k, 2), _repeat_heads(k, 2),
                                                                         0.0, False)[0])
        except RuntimeError:
            ok = False
        _NATIVE_GQA.append(ok)
    return _NATIVE_GQA[0]


def split_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    scaling: float | None) -> torch.Tensor:
    """Attention of query (B, H, L, D) over key/value (B, kv_heads, K, D), K >= L: every query sees the first
    K - L keys and the last L causally. Returns (B, L, H, D), the layout transformers' attention functions
    return."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and not _native_gqa():
        key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    n_prefix = key.shape[2] - query.shape[2]
    out = _PrefixCausal.apply(query.contiguous(), key.contiguous(), value.contiguous(), n_prefix, float(scale))
    return out.transpose(1, 2).contiguous()

