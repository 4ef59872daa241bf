"""Memory rows as per-layer prefix K/V, and per-segment attention masks.

A memory row placed in front of a chunk under a causal mask only ever serves as a key and a
value: its own output is overwritten at the next layer and never read. So instead of running
queries, attention output and the MLP on those rows, we compute their K/V exactly as the layer's
attention would (input norm, k/v projection, optional per-head k-norm, RoPE at the row's
position) and prepend them to the chunk's own K/V.
"""

from __future__ import annotations

import sys

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .split_attention import split_attention, split_gated_read


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


class _Rows:
    """Keys and values in preallocated (..., capacity, head_dim) buffers, filled from the start; views come back."""

    def __init__(self):
        self.k = self.v = None
        self.n = 0

    def append(self, k: torch.Tensor, v: torch.Tensor, capacity: int):
        r = k.shape[-2]
        if self.k is None or self.n + r > self.k.shape[-2]:  # allocate, or grow by doubling
            cap = max(capacity, self.n + r) if self.k is None else max(2 * self.k.shape[-2], self.n + r)
            new_k = k.new_empty(*k.shape[:-2], cap, k.shape[-1])
            new_v = v.new_empty(*v.shape[:-2], cap, v.shape[-1])
            if self.n:
                new_k[..., :self.n, :] = self.k[..., :self.n, :]
                new_v[..., :self.n, :] = self.v[..., :self.n, :]
            self.k, self.v = new_k, new_v
        self.k[..., self.n:self.n + r, :] = k
        self.v[..., self.n:self.n + r, :] = v
        self.n += r
        return self.k[..., :self.n, :], self.v[..., :self.n, :]


class ChunkKV:
    """The K/V cache of the open chunk in streaming: memory rows, then every segment's rows, in order.

    Like `PrefixKV(keep=True)`, but the rows live in preallocated buffers written in place, and `update` returns
    views: appending a row copies that row only (the buffers double if ever full). With `track_text`, the text
    rows' K/V are also kept, in order, in buffers of their own: the keys of the gated read's text pass, without
    a gather. Set `text_rows` (a slice or an index tensor of the rows of the next update) before each update.
    """

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None, capacity: int,
                 track_text: bool = False, text_capacity: int = 0):
        self.capacity, self.text_capacity, self.track_text = capacity, text_capacity, track_text
        self.text_rows = None
        self._all, self._text = _Rows(), _Rows()
        self.keys = self.values = None
        if keys is not None:
            self.keys, self.values = self._all.append(keys, values, capacity)

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        if self.track_text and self.text_rows is not None:
            rows = self.text_rows
            self._text.append(key_states[:, :, rows], value_states[:, :, rows], self.text_capacity)
        self.keys, self.values = self._all.append(key_states, value_states, self.capacity)
        return self.keys, self.values

    def text_kv(self):
        """(keys, values) of the chunk's text rows so far, (B, kv_heads, text rows, head_dim) views."""
        t = self._text
        return t.k[..., :t.n, :], t.v[..., :t.n, :]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._all.n


class SomeRowsKV:
    """The cache of a layer run on some rows of a segment only (`rows`, whose outputs are read): the K/V of every
    row of the segment were computed beforehand (`memory_kv`); the layer's own K/V of `rows` go into their places,
    and the whole segment's K/V, in order, go to `inner` (a `PrefixKV` or `ChunkKV`), as if every row had run."""

    def __init__(self, inner, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor):
        self.inner, self.keys, self.values, self.rows = inner, keys, values, rows

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        keys = self.keys.index_copy(2, self.rows, key_states.to(self.keys.dtype))
        values = self.values.index_copy(2, self.rows, value_states.to(self.values.dtype))
        return self.inner.update(keys, values, layer_idx, *args, **kwargs)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.inner.get_seq_length(layer_idx)


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
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive mask (B, 1, n_query, n_keys) for the last `n_query` keys acting as queries; with `rows`
    (indices among those n_query), (B, 1, len(rows), n_keys) for those queries only.

    A query sees a key iff the key is not later than it, is a real (non-padding) row, belongs to
    the same document, and (for sliding-window layers) lies within the window. Every query sees
    itself, so no row is fully masked.
    """
    n_keys = key_valid.shape[1]
    offset = n_keys - n_query
    q_idx = torch.arange(offset, n_keys, device=key_valid.device)
    if rows is not None:
        q_idx = q_idx[rows]
    k_idx = torch.arange(n_keys, device=key_valid.device)
    allowed = (k_idx[None, :] <= q_idx[:, None])[None]  # (1, q, k)
    allowed = allowed & key_valid[:, None, :]
    allowed = allowed & (key_doc[:, None, :] == key_doc[:, q_idx, None])
    if window is not None:
        q_pos = key_pos[:, q_idx]
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
    text_mask: additive mask (B, 1, T, K_text) over those keys, or None when every text row sees every text key.
    gate: (heads,) the layer's read gate; None: no text pass (only `key_limits`).
    key_limits: None, or for each query row the number of leading keys it sees (then attention_mask is None): a few
        rows, all keys real and of one document, each row seeing every key up to itself. Each row then attends over a
        view of its keys with no mask at all.
    text_kv: None (gather `text_keys` from the layer's keys), or a callable giving the text keys' (keys, values).
    split: every row sees every key before the segment and the segment's keys up to itself, and so does every text
        row among the text keys (then attention_mask and text_mask are None): both passes run as `split_attention`,
        with no mask at all.
    scratch: with `split`, when the segment's text rows are every text key of its chunk (it opens the chunk), a dict
        kept for the segment (every layer's call gets the same one): without grad, the text pass then runs once
        (`split_gated_read`).
    """

    def __init__(self, base_impl: str, text_rows: torch.Tensor | None, text_keys: torch.Tensor | None,
                 text_mask: torch.Tensor | None, gate: torch.Tensor | None, key_limits: list | None = None,
                 text_kv=None, split: bool = False, scratch: dict | None = None):
        self.base_impl, self.text_rows, self.text_keys = base_impl, text_rows, text_keys
        self.text_mask, self.gate, self.key_limits, self.text_kv = text_mask, gate, key_limits, text_kv
        self.split, self.scratch = split, scratch


def _base_attention(module, impl: str):
    """The backbone's own attention function (called per layer: no imports here)."""
    if impl in (None, "eager") or impl not in ALL_ATTENTION_FUNCTIONS:
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
    impl = comet_read.base_impl if comet_read is not None else _OUTER.get(id(module.config))
    base = _base_attention(module, impl)
    limits = None if comet_read is None else comet_read.key_limits
    split = comet_read is not None and comet_read.split
    if split and comet_read.gate is not None and comet_read.scratch is not None and not torch.is_grad_enabled():
        return split_gated_read(query, key, value, comet_read.text_rows, comet_read.gate, scaling,
                                comet_read.scratch), None
    if split:
        full, weights = split_attention(module, query, key, value, scaling), None
    elif limits is None:
        full, weights = base(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    else:  # row i sees keys [0, limits[i]): one unmasked call per row over a view of its keys
        full = torch.cat([base(module, query[:, :, i:i + 1], key[:, :, :n], value[:, :, :n], None, dropout=dropout,
                               scaling=scaling, **kwargs)[0] for i, n in enumerate(limits)], dim=1)
        weights = None
    if comet_read is None or comet_read.gate is None:
        return full, weights
    rows = comet_read.text_rows
    every = rows.numel() == query.shape[2]  # every row is a text row (decoding): no row gather or scatter
    if comet_read.text_kv is not None:
        text_k, text_v = comet_read.text_kv()
    else:
        text_k, text_v = key[:, :, comet_read.text_keys], value[:, :, comet_read.text_keys]
    text_q = query if every else query[:, :, rows]
    if split:
        text = split_attention(module, text_q, text_k, text_v, scaling)
    else:
        text, _ = base(module, text_q, text_k, text_v, comet_read.text_mask, dropout=dropout, scaling=scaling,
                       **kwargs)
    gate = comet_read.gate.to(full.dtype).view(1, 1, -1, 1)  # full/text: (B, rows, heads, head_dim)
    mixed = text + gate * ((full if every else full[:, rows]) - text)
    return mixed if every else full.index_copy(1, rows, mixed), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(GATED_READ, gated_read_attention)


_register()


_OUTER: dict = {}  # id(config) -> the backbone's own implementation, while a `use_gated_read` block is open


def base_implementation(layer) -> str | None:
    """The backbone's own attention implementation for `layer`, also inside a `use_gated_read` block."""
    config = layer.self_attn.config
    impl = config._attn_implementation
    return _OUTER.get(id(config)) if impl == GATED_READ else impl


class use_gated_read:
    """Within the block, `layer`'s attention module runs `gated_read_attention` (set and restored on its config,
    which is also how activation-checkpoint recomputation finds it again: the block is inside the recomputed cell).
    Returns the backbone's own implementation. Blocks nest: an inner block changes nothing (setting a transformers
    config attribute is slow, so streaming opens one block per segment around every layer), and attention without
    a `ReadSpec` inside a block runs the backbone's own implementation."""

    def __init__(self, layer):
        self.config = layer.self_attn.config

    def __enter__(self) -> str:
        self.previous = self.config._attn_implementation
        if self.previous == GATED_READ:
            return _OUTER[id(self.config)]
        _OUTER[id(self.config)] = self.previous
        self.config._attn_implementation = GATED_READ
        return self.previous

    def __exit__(self, *exc) -> None:
        if self.previous != GATED_READ:
            self.config._attn_implementation = self.previous
            _OUTER.pop(id(self.config), None)
