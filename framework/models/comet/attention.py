"""Memory rows as per-layer prefix K/V, and per-segment attention masks.

A memory row placed in front of a chunk under a causal mask only ever serves as a key and a
value: its own output is overwritten at the next layer and never read. So instead of running
queries, attention output and the MLP on those rows, we compute their K/V exactly as the layer's
attention would (input norm, k/v projection, optional per-head k-norm, RoPE at the row's
position) and prepend them to the chunk's own K/V.
"""

from __future__ import annotations

import torch


class PrefixKV:
    """The one method of an HF `Cache` that a decoder layer calls: `update`.

    It prepends stored K/V to the layer's new K/V. With `keep=True` the result is stored, so the
    next segment of the same chunk sees it (a per-layer KV cache for streaming and decoding).
    """

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None, keep: bool = False):
        self.keys, self.values, self.keep = keys, values, keep

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        if self.keys is not None:
            key_states = torch.cat([self.keys, key_states], dim=-2)
            value_states = torch.cat([self.values, value_states], dim=-2)
        if self.keep:
            self.keys, self.values = key_states, value_states
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def memory_kv(layer, rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """K/V that `layer`'s attention would produce for `rows` (B, M, d) at the given RoPE angles.

    Returns keys and values shaped (B, kv_heads, M, head_dim), ready to prepend.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(rows)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    k = attn.k_proj(x).view(shape)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    k = k.transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    k = k * cos + rotate_half(k) * sin
    return k, v


def segment_mask(
    key_valid: torch.Tensor,
    key_doc: torch.Tensor,
    key_pos: torch.Tensor,
    n_query: int,
    window: int | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive mask (B, 1, n_query, n_keys) for the last `n_query` keys acting as queries.

    A query sees a key iff the key is not later than it, is a real (non-padding) row, belongs to
    the same document, and (for sliding-window layers) lies within the window. Every query sees
    itself, so no row is fully masked.
    """
    n_keys = key_valid.shape[1]
    offset = n_keys - n_query
    q_idx = torch.arange(offset, n_keys, device=key_valid.device)
    k_idx = torch.arange(n_keys, device=key_valid.device)
    allowed = (k_idx[None, :] <= q_idx[:, None])[None]  # (1, q, k)
    allowed = allowed & key_valid[:, None, :]
    allowed = allowed & (key_doc[:, None, :] == key_doc[:, offset:, None])
    if window is not None:
        q_pos = key_pos[:, offset:]
        allowed = allowed & ((q_pos[:, :, None] - key_pos[:, None, :]) < window)
    allowed = allowed | (q_idx[:, None] == k_idx[None, :])[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


# ---------------------------------------------------------------------------------------- neutral start
GATED_READ = "longctx_comet_gated_read"  # the name under which transformers' attention interface finds it


class ReadSpec:
    """What `gated_read_attention` needs beside the layer's own arguments, for one segment at one layer.

    base_impl: the backbone's own attention implementation ("sdpa", "eager", ...), used for both passes.
    text_rows: (T,) long, the segment rows that are text tokens (the queries that read through the gate).
    text_keys: (K_text,) long, the keys that are text rows (of this segment and earlier ones of the chunk).
    text_mask: additive mask (B, 1, T, K_text) over those keys.
    gate: (heads,) the layer's read gate.
    """

    def __init__(self, base_impl: str, text_rows: torch.Tensor, text_keys: torch.Tensor, text_mask: torch.Tensor,
                 gate: torch.Tensor):
        self.base_impl, self.text_rows, self.text_keys = base_impl, text_rows, text_keys
        self.text_mask, self.gate = text_mask, gate


def _base_attention(module, impl: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if impl in (None, "eager") or impl not in ALL_ATTENTION_FUNCTIONS:
        import sys

        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[impl]


def gated_read_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         comet_read: ReadSpec | None = None, **kwargs):
    """Attention where text queries read non-text keys (memory, compression rows) through a per-head gate g:

        out_text_row = A_text + g * (A_full - A_text)

    A_full is the layer's usual attention over every key it may see (the reference formulation); A_text is the
    same query over the chunk's text keys only, which is what the base model computes on the chunk's window
    alone. g = 0 is the base model; g = 1 is the reference. Other rows (compression, readouts) use A_full.
    Both passes run through the backbone's own implementation, so sdpa and eager give the same result.
    """
    base = _base_attention(module, comet_read.base_impl if comet_read is not None else None)
    full, weights = base(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if comet_read is None:
        return full, weights
    rows, keys = comet_read.text_rows, comet_read.text_keys
    text, _ = base(module, query[:, :, rows], key[:, :, keys], value[:, :, keys], comet_read.text_mask,
                   dropout=dropout, scaling=scaling, **kwargs)
    gate = comet_read.gate.to(full.dtype).view(1, 1, -1, 1)  # full/text: (B, rows, heads, head_dim)
    mixed = text + gate * (full[:, rows] - text)
    return full.index_copy(1, rows, mixed), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(GATED_READ, gated_read_attention)


_register()


class use_gated_read:
    """Within the block, `layer`'s attention module runs `gated_read_attention` (set and restored on its config,
    which is also how activation-checkpoint recomputation finds it again: the block is inside the recomputed cell)."""

    def __init__(self, layer):
        self.config = layer.self_attn.config

    def __enter__(self) -> str:
        self.previous = self.config._attn_implementation
        self.config._attn_implementation = GATED_READ
        return self.previous

    def __exit__(self, *exc) -> None:
        self.config._attn_implementation = self.previous
