"""Chunk-major streaming: prefill any prefix length and decode, keeping only per-layer memory.

The stream holds each layer's memory plus a KV cache for the *open* chunk (the one still being
filled). Whole chunks of a long prefix go through exactly the training cell and leave nothing
behind but memory; a chunk is closed (compression token after a partial final group, readouts,
memory update) only when the next token arrives, so decoding never changes the layout that
training saw. Compression tokens are inserted after every `temp_stride` text tokens of a chunk,
in decoding too; they never appear in the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import use_gated_read
from .memory import LayerMemory, MemoryIndex


@dataclass
class OpenChunk:
    text_valid: torch.Tensor  # (B, n) per text token so far
    text_doc: torch.Tensor
    keys: object = None  # KeyMeta of memory rows + rows so far
    caches: list = field(default_factory=list)  # per layer ChunkKV
    comp_outputs: list = field(default_factory=list)  # per layer, list of (B, k, d)
    comp_valid: torch.Tensor | None = None
    comp_doc: torch.Tensor | None = None

    @property
    def n_text(self) -> int:
        return self.text_valid.shape[1]


class CoMeTStream:
    """Feed token ids in any pieces; get next-token logits; memory stays bounded."""

    def __init__(self, model):
        self.model = model
        self.memory = [LayerMemory() for _ in range(len(model.layers))]
        self.index = MemoryIndex()
        self.open: OpenChunk | None = None
        self.tokens_seen = 0
        self._mask_cache: dict = {}
        self._chunk_valid = self._chunk_doc = None  # (B, chunk_size) text meta of the open chunk

    @torch.no_grad()
    def feed(self, input_ids: torch.Tensor, logits: str | None = "last") -> torch.Tensor | None:
        """Append (B, n) tokens. logits: "all" -> (B, n, V); "last" -> (B, 1, V); None -> None."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"feed takes (batch, length>0) token ids; got shape {tuple(input_ids.shape)}")
        if logits not in ("all", "last", None):
            raise ValueError(f"logits={logits!r}: use 'all', 'last' or None")
        model, size = self.model, self.model.config.chunk_size
        embed = model.backbone.model.embed_tokens
        n, pos, outs = input_ids.shape[1], 0, []
        while pos < n:
            if self.open is not None and self.open.n_text == size:
                self._close()
            have = 0 if self.open is None else self.open.n_text
            take = min(size - have, n - pos)
            closes = have + take == size and pos + take < n
            wanted = "all" if logits == "all" else "last" if logits == "last" and pos + take == n else None
            piece = embed(input_ids[:, pos:pos + take])  # one chunk at a time: memory stays flat
            if closes and self.open is None:
                x, plan = self._whole_chunk(piece, wanted)
            else:
                x, plan = self._append(piece, wanted)
            if wanted:
                outs.append(model._logits(x, plan.text_rows if wanted == "all" else plan.text_rows[-1:]))
            pos += take
        self.tokens_seen += n
        return torch.cat(outs, dim=1) if outs else None

    def _text_meta(self, batch: int, n: int):
        device = self.model.device
        return torch.ones(batch, n, dtype=torch.bool, device=device), torch.zeros(batch, n, dtype=torch.long, device=device)

    def _chunk_rows(self) -> int:
        """The most rows a chunk holds besides memory: text, compression tokens, readouts."""
        cfg = self.model.config
        stride = self.model._stride
        return cfg.chunk_size + (-(-cfg.chunk_size // stride) if stride > 0 else 0) + cfg.global_mem_size

    @staticmethod
    def _read_rows(plan, text_out: str | None) -> torch.Tensor | None:
        """The rows whose last-layer outputs are read: the memory rows (compression, readouts) and the text rows of
        the logits asked for ("all", "last" or None). None: every row."""
        if text_out == "all":
            return None
        text = plan.text_rows[-1:] if text_out == "last" else plan.text_rows[:0]
        return torch.cat([plan.comp_rows, plan.readout_rows, text]).sort().values

    def _whole_chunk(self, embeds, text_out: str | None):
        """A full chunk with more text after it: the training cell, nothing cached. text_out: the text rows whose
        outputs are read ("all" or None); the last layer skips the others."""
        model = self.model
        valid, doc = self._text_meta(embeds.shape[0], embeds.shape[1])
        plan = model._plan(0, embeds.shape[1], True, valid, doc, self.index, None, mask_cache=self._mask_cache)
        x = model._embed_rows(plan, embeds)
        last = len(model.layers) - 1
        for layer_idx in range(len(model.layers)):
            rows = self._read_rows(plan, text_out) if layer_idx == last else None
            x, self.memory[layer_idx] = model._closed_cell(layer_idx, x, self.memory[layer_idx], plan, rows)
        self.index = plan.next_index
        return x, plan

    def _append(self, embeds, text_out: str | None):
        """Add text rows (and the compression tokens they complete) to the open chunk. text_out: the text rows
        whose outputs are read ("all", "last" or None); the last layer skips the others."""
        model = self.model
        batch, take = embeds.shape[:2]
        if self.open is None:
            # the stream's text is all real tokens of one document: the chunk's text meta are views of these
            self._chunk_valid, self._chunk_doc = self._text_meta(batch, model.config.chunk_size)
            self.open = OpenChunk(self._chunk_valid[:, :0], self._chunk_doc[:, :0], comp_valid=self._chunk_valid[:, :0],
                                  comp_doc=self._chunk_doc[:, :0], comp_outputs=[[] for _ in model.layers])
        oc = self.open
        start = oc.n_text
        oc.text_valid, oc.text_doc = self._chunk_valid[:, :start + take], self._chunk_doc[:, :start + take]
        opening = not oc.caches
        plan = model._plan(start, start + take, False, oc.text_valid, oc.text_doc, self.index, oc.keys,
                           capacity=self._chunk_rows() if opening else 0, uniform_text=True)
        x = model._embed_rows(plan, embeds)
        comp = plan.comp_rows
        last = len(model.layers) - 1
        with use_gated_read(model.layers[0]):  # one switch of the attention implementation for every layer
            for layer_idx in range(len(model.layers)):
                if opening:
                    oc.caches.append(model._prefix(layer_idx, self.memory[layer_idx], plan, keep=True,
                                                   capacity=self._chunk_rows()))
                rows = self._read_rows(plan, text_out) if layer_idx == last else None
                x = model._layer(layer_idx, x, plan, oc.caches[layer_idx], rows)
                if comp.numel():
                    oc.comp_outputs[layer_idx].append(x[:, comp])
        if comp.numel():
            oc.comp_valid = torch.cat([oc.comp_valid, plan.row_valid[:, comp]], 1)
            oc.comp_doc = torch.cat([oc.comp_doc, plan.row_doc[:, comp]], 1)
        oc.keys = plan.keys
        return x, plan

    def _close(self):
        """Trailing compression token and readouts over the open chunk's cache, then the memory update."""
        model, oc = self.model, self.open
        n = oc.n_text
        plan = model._plan(n, n, True, oc.text_valid, oc.text_doc, self.index, oc.keys,
                           comp_meta=(oc.comp_valid, oc.comp_doc), uniform_text=True)
        x = model._embed_rows(plan, model.compress_embed.new_zeros(oc.text_valid.shape[0], 0, model.compress_embed.shape[0]))
        with use_gated_read(model.layers[0]):
            for layer_idx in range(len(model.layers)):
                # nothing to add when the last group is complete and there are no readouts (global_mem_size=0)
                if plan.layout.n_rows:
                    x = model._layer(layer_idx, x, plan, oc.caches[layer_idx])
                compressed = torch.cat(oc.comp_outputs[layer_idx] + [x[:, plan.comp_rows]], dim=1)
                self.memory[layer_idx] = model._next_memory(
                    layer_idx, x[:, plan.readout_rows], compressed, self.memory[layer_idx], plan)
        self.index = plan.next_index
        self.open = None
