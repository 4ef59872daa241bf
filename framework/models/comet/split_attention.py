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


def _kv_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """The keys and values the kernel gets for `query`'s heads: as they are where the kernel shares a key/value
    head between query heads itself, else repeated per query head. With grad, always repeated: the kernel's own
    grouped backward peaks about 10% higher in training."""
    groups = query.shape[1] // key.shape[1]
    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if groups > 1 and (grad or not _native_gqa()):
        return _repeat_heads(key, groups), _repeat_heads(value, groups)
    return key, value


def split_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    scaling: float | None) -> torch.Tensor:
    """Attention of query (B, H, L, D) over key/value (B, kv_heads, K, D), K >= L: every query sees the first
    K - L keys and the last L causally. Returns (B, L, H, D), the layout transformers' attention functions
    return."""
    key, value = _kv_heads(query, key, value)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    n_prefix = key.shape[2] - query.shape[2]
    out = _PrefixCausal.apply(query.contiguous(), key.contiguous(), value.contiguous(), n_prefix, float(scale))
    return out.transpose(1, 2).contiguous()


def _attend(q, k, v, causal: bool = False, mask: torch.Tensor | None = None, scale: float = 1.0):
    """(output, log-sum-exp) of the fused kernel."""
    k, v = _kv_heads(q, k, v)
    return _FORWARD(q, k.contiguous(), v.contiguous(), 0.0, causal, attn_mask=mask, scale=scale)


def later_mask(rows: torch.Tensor, keys: torch.Tensor, dtype: torch.dtype, strict: bool = False) -> torch.Tensor:
    """Additive (1, 1, rows, keys) mask by index: row r sees key s iff s <= r (strict: s < r)."""
    later = keys[None, :] >= rows[:, None] if strict else keys[None, :] > rows[:, None]
    return torch.zeros(later.shape, dtype=dtype, device=rows.device).masked_fill_(later, torch.finfo(dtype).min)[None, None]


def split_gated_read(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, text_rows: torch.Tensor,
                     gate: torch.Tensor, scaling: float | None, scratch: dict) -> torch.Tensor:
    """The gated read of a whole segment in the `split` case (every row sees every key before the segment and the
    segment's keys up to itself), when the segment's text rows are all the text keys (it opens its chunk), without
    grad. The text pass is one piece of the text rows' full attention, so it runs once:

        text rows:   A_text = causal over the text keys;   A_full = merge(A_text, earlier keys, earlier other rows)
                     out = A_text + gate * (A_full - A_text)
        other rows:  A_full = merge(earlier keys, the segment's keys up to the row)

    query (B, H, L, D); key/value (B, kv_heads, P + L, D); text_rows (T,) sorted segment rows; gate (H,).
    scratch: a dict kept for the segment (the same for every layer) that holds its index tensors and masks.
    Returns (B, L, H, D)."""
    b, heads, n_rows, dim = query.shape
    n_prefix = key.shape[2] - n_rows
    scale = scaling if scaling is not None else dim ** -0.5
    scratch = scratch.setdefault((query.dtype, n_rows), {})
    if "other_rows" not in scratch:
        is_other = torch.ones(n_rows, dtype=torch.bool, device=query.device)
        is_other[text_rows] = False
        other = is_other.nonzero().flatten()
        before_text = other[other < text_rows[-1]]  # the other rows some text row sees (compression rows)
        scratch.update(other_rows=other, other_before_text=before_text,
                       text_other_mask=later_mask(text_rows, before_text, query.dtype, strict=True),
                       other_mask=later_mask(other, torch.arange(n_rows, device=query.device), query.dtype))
    other, before_text = scratch["other_rows"], scratch["other_before_text"]
    query = query.contiguous()
    seg_k, seg_v = key[:, :, n_prefix:], value[:, :, n_prefix:]
    prefix = _attend(query, key[:, :, :n_prefix], value[:, :, :n_prefix], scale=scale) if n_prefix else None

    def with_prefix(part, rows):
        return part if prefix is None else merge(prefix[0][:, :, rows], prefix[1][:, :, rows], *part)

    q_text = query[:, :, text_rows]
    text = _attend(q_text, seg_k[:, :, text_rows], seg_v[:, :, text_rows], causal=True, scale=scale)
    full_text = with_prefix(text, text_rows)
    if before_text.numel():
        full_text = merge(*full_text, *_attend(q_text, seg_k[:, :, before_text], seg_v[:, :, before_text],
                                               mask=scratch["text_other_mask"], scale=scale))
    out = query.new_empty(b, heads, n_rows, dim)
    out[:, :, text_rows] = text[0] + gate.to(query.dtype).view(1, -1, 1, 1) * (full_text[0] - text[0])
    if other.numel():
        full_other = with_prefix(_attend(query[:, :, other], seg_k, seg_v, mask=scratch["other_mask"], scale=scale),
                                 other)
        out[:, :, other] = full_other[0]
    return out.transpose(1, 2).contiguous()
