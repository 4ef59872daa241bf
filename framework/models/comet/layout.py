"""The per-chunk token layout, identical in training, prefill and decoding.

A chunk holds [memory | text with a compression token after every `stride` text tokens | readouts].
The memory part is prefix K/V (see attention.py), so a chunk's *rows* are only the text,
compression and readout tokens. A closed chunk has a compression token after its final partial
group too, then `n_readouts` readout tokens; an open chunk (the one being decoded into) has
neither yet. A *segment* is a run of rows appended to a chunk: a whole chunk in training, the open
tail of a prompt in prefill, or one token (plus its compression token) in decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

TEXT, COMPRESS, READOUT = 0, 1, 2


@dataclass(frozen=True)
class SegmentLayout:
    """Rows of one segment, in order.

    kind: (R,) TEXT / COMPRESS / READOUT per row.
    arg: (R,) for TEXT, the token's index within the chunk's text; for COMPRESS, the index of the
        last text token of its group; for READOUT, the slot number.
    """

    kind: torch.Tensor
    arg: torch.Tensor

    @property
    def n_rows(self) -> int:
        return int(self.kind.numel())

    def rows_of(self, kind: int) -> torch.Tensor:
        return (self.kind == kind).nonzero().flatten()

    def args_of(self, kind: int) -> torch.Tensor:
        return self.arg[self.kind == kind]


@lru_cache(maxsize=256)
def segment_layout(text_start: int, text_end: int, stride: int, n_readouts: int, close: bool) -> SegmentLayout:
    """Rows for chunk-text tokens [text_start, text_end), closing the chunk if `close`.

    stride <= 0 means no compression tokens.
    """
    kind, arg = [], []
    for i in range(text_start, text_end):
        kind.append(TEXT)
        arg.append(i)
        if stride > 0 and (i + 1) % stride == 0:
            kind.append(COMPRESS)
            arg.append(i)
    if close:
        if stride > 0 and text_end % stride != 0 and text_end > 0:
            kind.append(COMPRESS)
            arg.append(text_end - 1)
        for j in range(n_readouts):
            kind.append(READOUT)
            arg.append(j)
    return SegmentLayout(torch.tensor(kind, dtype=torch.long), torch.tensor(arg, dtype=torch.long))


@dataclass(frozen=True)
class LayoutRows:
    """Index tensors of a layout's rows on one device (they depend on the row kinds only)."""

    text: torch.Tensor  # (T,) rows that are text tokens
    comp: torch.Tensor  # compression rows
    readout: torch.Tensor  # readout rows
    gather: torch.Tensor  # rows of cat([text, compress, readout]) in layout order
    is_text: torch.Tensor  # (R,) bool
    is_comp: torch.Tensor  # (R,) bool
    n_other: int  # rows that are not text
    text_index: object  # the text rows as a slice when they are contiguous, else `text`


_ROWS: dict = {}


def layout_rows(layout: SegmentLayout, device) -> LayoutRows:
    """The layout's `LayoutRows`, cached by row kinds (a decoding segment is one of a few patterns)."""
    key = (layout.kind.numpy().tobytes(), str(device))
    rows = _ROWS.get(key)
    if rows is None:
        kind = layout.kind
        text = layout.rows_of(TEXT)
        n_text = text.numel()
        contiguous = n_text == 0 or int(text[-1]) - int(text[0]) + 1 == n_text
        order = torch.argsort(kind, stable=True)
        parts = dict(text=text, comp=layout.rows_of(COMPRESS), readout=layout.rows_of(READOUT),
                     gather=torch.argsort(order), is_text=kind == TEXT, is_comp=kind == COMPRESS)
        on = {k: v.to(device) for k, v in parts.items()}
        text_index = slice(int(text[0]), int(text[0]) + n_text) if contiguous and n_text else on["text"]
        rows = LayoutRows(**on, n_other=int(layout.n_rows - n_text), text_index=text_index)
        if len(_ROWS) >= 64:
            _ROWS.clear()
        _ROWS[key] = rows
    return rows


def row_meta(
    layout: SegmentLayout, stride: int, text_valid: torch.Tensor, text_doc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid, doc) per row, each (B, R), from the chunk's text so far.

    text_valid, text_doc: (B, n) for the chunk's text tokens [0, n), n >= the segment's end.
    A compression token is real if any token of its group is, and belongs to the document of the
    group's last real token; readouts belong to the document of the chunk's last real token.
    """
    batch, n = text_valid.shape
    device = text_valid.device
    kind, arg = layout.kind.to(device), layout.arg.to(device)
    # last real token at or before each text index (or the index itself if none is real)
    idx = torch.arange(n, device=device).expand(batch, n)
    raw_last = torch.where(text_valid, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    last_real = torch.where(raw_last < 0, idx, raw_last)
    valid = torch.ones(batch, layout.n_rows, dtype=torch.bool, device=device)
    doc = torch.zeros(batch, layout.n_rows, dtype=text_doc.dtype, device=device)

    is_text = kind == TEXT
    valid[:, is_text] = text_valid[:, arg[is_text]]
    doc[:, is_text] = text_doc[:, arg[is_text]]

    is_comp = kind == COMPRESS
    if is_comp.any():
        last = arg[is_comp]
        first = (last // stride) * stride
        valid[:, is_comp] = raw_last[:, last] >= first
        doc[:, is_comp] = text_doc.gather(1, last_real[:, last])

    is_read = kind == READOUT
    if is_read.any():
        doc[:, is_read] = text_doc.gather(1, last_real[:, n - 1 :]).expand(batch, int(is_read.sum()))
    return valid, doc


def last_real_doc(text_valid: torch.Tensor, text_doc: torch.Tensor) -> torch.Tensor:
    """(B,) document of each sequence's last real token (of its last token if none is real)."""
    n = text_valid.shape[1]
    idx = torch.arange(n, device=text_valid.device).expand_as(text_valid)
    last = torch.where(text_valid, idx, torch.full_like(idx, -1)).amax(dim=1).clamp(min=0)
    last = torch.where(text_valid.any(dim=1), last, torch.full_like(last, n - 1))
    return text_doc.gather(1, last[:, None]).squeeze(1)


def chunk_plan_layout(chunk_ids: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, int, int]:
    """Where each token goes when the chunks of a chunk plan are laid out one per fixed-size slot.

    chunk_ids: (B, N) long, the chunk of every token (``data_pipelines.chunking.ChunkedSource``):
    each row starts at chunk 0 and steps by 0 or 1, and no chunk holds more than `chunk_size` tokens.
    Returns (dest, length, slot): slot is the plan's longest chunk, and token (b, i) moves to position
    dest[b, i] of a (B, length) layout in which chunk c fills [c * slot, c * slot + its size) and the
    rest of its slot is padding. Fixed chunks of `slot` tokens then follow the plan exactly; padding
    rows are masked like any other.
    """
    if chunk_ids.dim() != 2 or chunk_ids.shape[1] == 0:
        raise ValueError(f"chunk_ids must be (batch, length>0); got shape {tuple(chunk_ids.shape)}")
    ids = chunk_ids.long()
    steps = ids[:, 1:] - ids[:, :-1]
    if bool((ids[:, 0] != 0).any()) or bool(((steps != 0) & (steps != 1)).any()):
        raise ValueError("chunk_ids must start at 0 in every row and grow by 0 or 1 from token to token (one id per "
                         "chunk, chunks in order). Fix: build them with data_pipelines.chunking.ChunkedSource")
    batch, n = ids.shape
    pos = torch.arange(n, device=ids.device).expand(batch, n)
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = steps != 0
    offset = pos - torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
    slot = int(offset.max()) + 1
    if slot > chunk_size:
        raise ValueError(f"a chunk of the plan holds {slot} tokens, more than the model's chunk_size="
                         f"{chunk_size}. Fix: set the data's chunking.chunk_size to at most {chunk_size}")
    return ids * slot + offset, (int(ids.max()) + 1) * slot, slot
