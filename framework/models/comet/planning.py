"""Chunk planning for CoMeT: how a sequence is cut into chunks and segments, which rows of a segment are text,
compression and readout rows, each key's document and RoPE position, the attention masks, and which memory rows
survive a chunk. Everything here is metadata, the same for every layer; `CoMeTForCausalLM` runs the layers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .attention import segment_mask
from .layout import SegmentLayout, chunk_plan_layout, last_real_doc, layout_rows, row_meta, segment_layout
from .memory import MemoryIndex, fifo_select
from .split_attention import later_mask

FEW_ROWS = 4  # segments of at most this many rows (decoding) attend without masks when they can


@dataclass
class KeyMeta:
    """Per key row of a chunk, so far: real or padding, document, RoPE position, text token or not. Each (B, n).

    count (B, 1): rows so far that advanced the position (real rows; with neutral_start, not compression rows,
    which share the position of the row before them).
    n_other: keys that are not text rows (memory, compression, readouts); the layout is shared, so one number.
    store: set while the meta is the newest prefix of preallocated buffers (streaming): `extend` then writes the
    new rows in place instead of copying every earlier key.
    """

    valid: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    text: torch.Tensor
    count: torch.Tensor
    n_other: int = 0
    store: "KeyStore | None" = None
    all_valid: bool | None = None  # every key real (None: not known, look)

    @classmethod
    def memory(cls, valid, doc, capacity: int = 0) -> "KeyMeta":
        """The memory rows' meta; with `capacity`, backed by buffers with room for that many more rows."""
        pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        meta = cls(valid, doc, pos, torch.zeros_like(valid), valid.long().sum(dim=1, keepdim=True), valid.shape[1],
                   all_valid=bool(valid.all()))
        return KeyStore(meta, valid.shape[1] + capacity).meta if capacity else meta

    @property
    def parts(self) -> tuple:
        return self.valid, self.doc, self.pos, self.text

    def extend(self, valid, doc, advance, text, n_other: int | None = None) -> "KeyMeta":
        """The meta with rows appended; n_other: how many of them are not text rows (counted if None)."""
        pos = (self.count + advance.long().cumsum(dim=1) - 1).clamp(min=0)
        count = self.count + advance.long().sum(dim=1, keepdim=True)
        if n_other is None:
            n_other = int((~text).sum(dim=1).max()) if text.numel() else 0
        parts, n_other = (valid, doc, pos, text), self.n_other + n_other
        all_valid = None if self.all_valid is None else self.all_valid and bool(valid.all())
        if self.store is not None and self.store.length == self.valid.shape[1]:
            return self.store.append(parts, count, n_other, all_valid)
        return KeyMeta(*(torch.cat([a, b], 1) for a, b in zip(self.parts, parts)), count, n_other,
                       all_valid=all_valid)

    @property
    def every_valid(self) -> bool:
        return self.all_valid if self.all_valid is not None else bool(self.valid.all())


class KeyStore:
    """Preallocated (B, capacity) buffers of per-key meta for one open chunk; they double if ever full."""

    def __init__(self, meta: KeyMeta, capacity: int):
        self.buffers = [t.new_empty(t.shape[0], max(capacity, t.shape[1])) for t in meta.parts]
        self.length = 0
        self.meta = self.append(meta.parts, meta.count, meta.n_other, meta.all_valid)

    def append(self, parts, count, n_other, all_valid) -> KeyMeta:
        n, r = self.length, parts[0].shape[1]
        if n + r > self.buffers[0].shape[1]:  # earlier metas keep viewing the old buffers, which stay valid
            cap = max(2 * self.buffers[0].shape[1], n + r)
            grown = [b.new_empty(b.shape[0], cap) for b in self.buffers]
            for new, old in zip(grown, self.buffers):
                new[:, :n] = old[:, :n]
            self.buffers = grown
        for buf, part in zip(self.buffers, parts):
            buf[:, n:n + r] = part
        self.length = n + r
        return KeyMeta(*(b[:, :n + r] for b in self.buffers), count, n_other, self, all_valid)


@dataclass
class SegmentPlan:
    """Everything about one segment that is the same for every layer."""

    layout: SegmentLayout
    keys: KeyMeta  # memory rows + earlier rows of the chunk + this segment's rows
    positions: torch.Tensor  # (B, R)
    cos: torch.Tensor
    sin: torch.Tensor
    mem_cos: torch.Tensor | None  # RoPE for the memory rows; set when the segment opens a chunk
    mem_sin: torch.Tensor | None
    text_rows: torch.Tensor
    comp_rows: torch.Tensor
    readout_rows: torch.Tensor
    row_valid: torch.Tensor
    row_doc: torch.Tensor
    gather_rows: torch.Tensor  # rows from cat([text, compress, readout]) in layout order
    masks: dict
    simple: bool  # no padding and no documents: the mask depends on shapes only
    mask_cache: dict
    layout_key: tuple  # (text_start, text_end, close, memory rows): with `simple`, fixes the text-key pattern
    few: bool = False  # `simple` and at most FEW_ROWS rows (decoding): each row sees every key up to itself
    max_pos: int | None = None  # highest row position, once asked for
    text_index: object = None  # the text rows as a slice when they are contiguous, else `text_rows`
    # set when the segment closes its chunk
    fresh: torch.Tensor | None = None
    gate_repeats: torch.Tensor | None = None  # (B,) k of the gated update (training with gate_repeat_max > 1)
    fifo_index: torch.Tensor | None = None
    next_index: MemoryIndex | None = None

    def unmasked(self, window: int | None) -> bool:
        """Whether each row sees every key up to itself: every key real, one document, and no sliding window that
        cuts (the highest position is inside it). Then attention needs no mask."""
        if not self.simple:
            return False
        if window is not None and self.max_pos is None:
            self.max_pos = int(self.positions.max())
        return window is None or self.max_pos < window

    def prefix_only(self, window: int | None) -> bool:
        """`unmasked` and a few rows (decoding): each row attends over a view of its keys, no mask built at all."""
        return self.few and self.unmasked(window)

    def key_limits(self) -> list:
        """With `prefix_only`: how many leading keys each row sees."""
        n_keys, n_rows = self.keys.valid.shape[1], self.layout.n_rows
        return list(range(n_keys - n_rows + 1, n_keys + 1))

    def mask(self, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        key = (window, dtype)
        if key in self.masks:
            return self.masks[key]
        shared_key = (self.keys.valid.shape, self.layout.n_rows, window, dtype)
        if self.simple and shared_key in self.mask_cache:
            mask = self.mask_cache[shared_key]
        else:
            mask = segment_mask(self.keys.valid, self.keys.doc, self.keys.pos, self.layout.n_rows, window, dtype)
            if self.simple:  # masks of the same shape are equal; keep only the newest shape
                self.mask_cache.clear()
                self.mask_cache[shared_key] = mask
        self.masks[key] = mask
        return mask

    def rows_mask(self, rows: torch.Tensor, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (B, 1, len(rows), keys) for some rows of the segment acting as queries (not cached)."""
        if not self.unmasked(window):
            return segment_mask(self.keys.valid, self.keys.doc, self.keys.pos, self.layout.n_rows, window, dtype, rows)
        n_keys = self.keys.valid.shape[1]  # each row sees every key up to itself
        mask = later_mask(rows + (n_keys - self.layout.n_rows), torch.arange(n_keys, device=rows.device), dtype)
        return mask.expand(self.keys.valid.shape[0], -1, -1, -1)

    @property
    def reads_non_text(self) -> bool:
        """Whether any key is a memory or compression row (else text rows see text only, gated or not)."""
        return self.keys.n_other > 0

    @property
    def text_keys(self) -> torch.Tensor:
        """(K_text,) indices of the text keys (the same in every sequence of the batch: the layout is shared).
        Found once per segment, not once per layer."""
        if "text_keys" not in self.masks:
            self.masks["text_keys"] = self.keys.text[0].nonzero().flatten()
        return self.masks["text_keys"]

    def text_mask(self, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (B, 1, text rows, text keys): what a text row sees when it reads text keys only."""
        key = ("text", window, dtype)
        if key in self.masks:
            return self.masks[key]
        shared_key = (self.keys.valid.shape, self.layout_key, window, dtype, "text")
        if self.simple and shared_key in self.mask_cache:
            mask = self.mask_cache[shared_key]
        else:
            mask = segment_mask(self.keys.valid & self.keys.text, self.keys.doc, self.keys.pos, self.layout.n_rows,
                                window, dtype)[:, :, self.text_rows][..., self.text_keys]
            if self.simple:
                self.mask_cache[shared_key] = mask
        self.masks[key] = mask
        return mask


def sample_gate_repeats(batch: int, most: float, prob: float, device) -> torch.Tensor:
    """(batch,) repeat counts: 1, or with probability `prob` log-uniform in [1, most]."""
    k = torch.exp(torch.rand(batch, device=device) * math.log(most))
    return torch.where(torch.rand(batch, device=device) < prob, k, torch.ones_like(k))


def temp_stride(cfg) -> int:
    """Text rows between compression rows; -1 when the model has no temporary memory."""
    return cfg.temp_stride if cfg.uses_temp_memory else -1


def plan_segment(cfg, rope, training: bool, text_start, text_end, close, text_valid, text_doc, index: MemoryIndex,
                 prior: KeyMeta | None, comp_meta=None, mask_cache=None, capacity: int = 0,
                 uniform_text: bool = False) -> SegmentPlan:
    """Plan a segment of the chunk whose text so far is described by text_valid/text_doc (B, n).

    cfg: the model's CoMeT config; rope: positions -> (cos, sin); training: the model is training.
    prior: key meta of the chunk so far (None: this segment opens the chunk).
    comp_meta: (valid, doc) of the chunk's earlier compression rows, when closing in several segments.
    capacity: when opening a chunk, room for that many rows in the key meta's buffers (streaming: later
        segments then extend it in place).
    uniform_text: every text token is real and of document 0 (streaming): every row is then real and of
        document 0 too, without reading the chunk's text meta.
    """
    batch, device = text_valid.shape[0], text_valid.device
    n_read = cfg.global_mem_size if close else 0
    stride = temp_stride(cfg)
    layout = segment_layout(text_start, text_end, stride, n_read, close)
    rows = layout_rows(layout, device)
    if uniform_text:
        valid = torch.ones(batch, layout.n_rows, dtype=torch.bool, device=device)
        doc = torch.zeros(batch, layout.n_rows, dtype=text_doc.dtype, device=device)
    else:
        valid, doc = row_meta(layout, stride, text_valid, text_doc)
    mem_cos = mem_sin = None
    if prior is None:
        prior = KeyMeta.memory(*index.row_meta(cfg.global_mem_size, batch, device), capacity=capacity)
        if prior.valid.shape[1]:
            mem_cos, mem_sin = rope(prior.pos)
    n_mem = prior.n_other
    is_text = rows.is_text.expand(batch, -1)
    advance = valid & ~rows.is_comp if cfg.neutral_start else valid
    keys = prior.extend(valid, doc, advance, is_text, rows.n_other)
    positions = keys.pos[:, -layout.n_rows:]
    cos, sin = rope(positions)
    simple = keys.every_valid and not cfg.reset_memory_at_doc_boundaries
    plan = SegmentPlan(
        layout=layout, keys=keys, positions=positions, cos=cos, sin=sin, mem_cos=mem_cos, mem_sin=mem_sin,
        text_rows=rows.text, comp_rows=rows.comp, readout_rows=rows.readout, row_valid=valid, row_doc=doc,
        gather_rows=rows.gather, masks={}, simple=simple,
        mask_cache=mask_cache if mask_cache is not None else {},
        layout_key=(text_start, text_end, close, n_mem),
        few=simple and layout.n_rows <= FEW_ROWS, text_index=rows.text_index,
    )
    if close:
        cv, cd = valid[:, rows.is_comp], doc[:, rows.is_comp]
        if comp_meta is not None:
            cv, cd = torch.cat([comp_meta[0], cv], 1), torch.cat([comp_meta[1], cd], 1)
        plan_close(cfg, training, plan, index, cv, cd, last_real_doc(text_valid, text_doc))
    return plan


def plan_close(cfg, training: bool, plan: SegmentPlan, index: MemoryIndex, comp_valid, comp_doc, last_doc) -> None:
    """What closing the chunk does to memory: fresh global states, gate repeats, the FIFO's surviving rows."""
    reset = cfg.reset_memory_at_doc_boundaries
    if cfg.uses_global_memory and index.has_global and reset:
        plan.fresh = index.state_doc != last_doc
    if cfg.uses_global_memory and index.has_global and training and cfg.gate_repeat_max > 1:
        plan.gate_repeats = sample_gate_repeats(last_doc.shape[0], cfg.gate_repeat_max, cfg.gate_repeat_prob,
                                                last_doc.device)
    queue_valid = queue_doc = None
    if cfg.uses_temp_memory:
        old_valid = index.queue_valid if index.queue_valid is not None else comp_valid[:, :0]
        old_doc = index.queue_doc if index.queue_doc is not None else comp_doc[:, :0]
        new_valid = comp_valid
        if reset:
            old_valid = old_valid & (old_doc == last_doc[:, None])
            new_valid = new_valid & (comp_doc == last_doc[:, None])
        plan.fifo_index, queue_valid = fifo_select(old_valid, new_valid, cfg.temp_budget)
        queue_doc = torch.cat([old_doc, comp_doc], 1).gather(1, plan.fifo_index)
    plan.next_index = MemoryIndex(cfg.uses_global_memory, last_doc, queue_valid, queue_doc)


def plan_chunks(cfg, rope, training: bool, text_valid, text_doc, mask_cache, size: int | None = None) -> list:
    """Closed-chunk plans for a whole sequence, in order: [(start, end, plan)], chunks of `size` (chunk_size)."""
    n, size = text_valid.shape[1], size or cfg.chunk_size
    index, plans = MemoryIndex(), []
    for start in range(0, n, size):
        end = min(start + size, n)
        plan = plan_segment(cfg, rope, training, 0, end - start, True, text_valid[:, start:end],
                            text_doc[:, start:end], index, None, mask_cache=mask_cache)
        plans.append((start, end, plan))
        index = plan.next_index
    return plans


def follow_chunk_plan(chunk_size: int, chunk_ids, embeds, text_valid, text_doc, targets):
    """Spread the sequence so that each chunk of the plan fills one slot of the plan's longest chunk (the rest
    is padding). Attention never crosses a chunk and positions count real rows only, so a shorter chunk
    than chunk_size computes what chunk_size would for the same tokens."""
    dest, length, slot = chunk_plan_layout(chunk_ids, chunk_size)
    batch, n = dest.shape

    def spread(x, fill):
        out = x.new_full((batch, length, *x.shape[2:]), fill)
        index = dest.view(batch, n, *([1] * (x.dim() - 2))).expand_as(x)
        return out.scatter(1, index, x)

    # padding takes the document of the token before it (token 0 always lands at position 0)
    source = spread(torch.arange(n, device=dest.device).expand(batch, n), -1).cummax(dim=1).values
    new_doc = text_doc.gather(1, source)
    new_targets = None if targets is None else spread(targets, -100)
    return dest, slot, spread(embeds, 0.0), spread(text_valid, False), new_doc, new_targets
