"""CoMeTForCausalLM: a Hugging Face causal LM made chunk-recurrent with per-layer memory."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

from ..hf_compat import cache_keyword

from .attention import PrefixKV, ReadSpec, memory_kv, segment_mask, use_gated_read
from .backbone import BackboneError, check_backbone, embedding_stats, layer_window, load_backbone, use_maskable_attention
from .config import CoMeTConfig
from .layout import COMPRESS, READOUT, TEXT, SegmentLayout, chunk_plan_layout, last_real_doc, row_meta, segment_layout
from .memory import LayerMemory, LayerMemoryNets, LowRankAdapter, MemoryIndex, fifo_select

COMET_WEIGHTS = "comet.safetensors"
COMET_CONFIG = "comet_config.json"
FORMAT_VERSION = 1


@dataclass
class CoMeTOutput(ModelOutput):
    """loss: mean cross-entropy over text tokens; loss_sum and num_tokens give the global mean across
    ranks; logits: (B, N, vocab) over text positions only; memory: each layer's memory after the input."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    memory: list | None = None


@dataclass
class KeyMeta:
    """Per key row of a chunk, so far: real or padding, document, RoPE position, text token or not. Each (B, n).

    count (B, 1): rows so far that advanced the position (real rows; with neutral_start, not compression rows,
    which share the position of the row before them).
    """

    valid: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    text: torch.Tensor
    count: torch.Tensor

    @classmethod
    def memory(cls, valid, doc) -> "KeyMeta":
        pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        return cls(valid, doc, pos, torch.zeros_like(valid), valid.long().sum(dim=1, keepdim=True))

    def extend(self, valid, doc, advance, text) -> "KeyMeta":
        pos = (self.count + advance.long().cumsum(dim=1) - 1).clamp(min=0)
        return KeyMeta(torch.cat([self.valid, valid], 1), torch.cat([self.doc, doc], 1), torch.cat([self.pos, pos], 1),
                       torch.cat([self.text, text], 1), self.count + advance.long().sum(dim=1, keepdim=True))


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
    # set when the segment closes its chunk
    fresh: torch.Tensor | None = None
    gate_repeats: torch.Tensor | None = None  # (B,) k of the gated update (training with gate_repeat_max > 1)
    fifo_index: torch.Tensor | None = None
    next_index: MemoryIndex | None = None

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

    @property
    def reads_non_text(self) -> bool:
        """Whether any key is a memory or compression row (else text rows see text only, gated or not)."""
        return not bool(self.keys.text.all())

    @property
    def text_keys(self) -> torch.Tensor:
        """(K_text,) indices of the text keys (the same in every sequence of the batch: the layout is shared)."""
        return self.keys.text[0].nonzero().flatten()

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


class CoMeTForCausalLM(nn.Module):
    """A pretrained causal LM turned into a chunk-recurrent model with constant memory.

    Every decoder layer gets its own memory stream: a gated global memory written by readout
    tokens and a FIFO temporary memory written by compression tokens. Both are injected into the
    next chunk at the same layer as prefix K/V.
    """

    def __init__(self, backbone: nn.Module, config: CoMeTConfig):
        super().__init__()
        check_backbone(backbone)
        use_maskable_attention(backbone)
        config.validate()
        self.config = config
        self.backbone = backbone
        hf = backbone.config
        dim = hf.hidden_size
        eps = getattr(hf, "rms_norm_eps", 1e-6)
        embed = backbone.model.embed_tokens
        ref = embed.weight
        heads = hf.num_attention_heads if config.neutral_start else 0
        self.memory_nets = nn.ModuleList(
            LayerMemoryNets(dim, config.adapter_rank, eps, config.temp_norm_eps,
                            config.uses_global_memory, config.uses_temp_memory, config.global_gate == "learned",
                            read_heads=heads)
            for _ in range(len(backbone.model.layers))
        ).to(device=ref.device, dtype=ref.dtype)
        self.readout_embed = nn.Parameter(torch.zeros(config.global_mem_size, dim, device=ref.device, dtype=ref.dtype))
        self.compress_embed = nn.Parameter(torch.zeros(dim, device=ref.device, dtype=ref.dtype))
        self._init_new_weights(getattr(hf, "initializer_range", 0.02))

    # ------------------------------------------------------------------ construction
    def _init_new_weights(self, std: float) -> None:
        with torch.no_grad():
            for module in self.memory_nets.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)
            for module in self.memory_nets.modules():
                if isinstance(module, LowRankAdapter) and self.config.neutral_start:
                    module.up.weight.zero_()  # the adapters start as the identity
            mean, spread = embedding_stats(self.backbone.model.embed_tokens)
            noise = torch.randn(self.readout_embed.shape, device=mean.device) * spread * 1e-3
            self.readout_embed.copy_(mean + noise)
            self.compress_embed.copy_(mean)

    @classmethod
    def from_base(cls, base, config: CoMeTConfig | None = None, **load_kwargs) -> "CoMeTForCausalLM":
        """Wrap a transformers causal LM (an instance, a local directory or a model id)."""
        return cls(load_backbone(base, **load_kwargs), config or CoMeTConfig())

    def save_pretrained(self, directory, tokenizer=None, **save_kwargs) -> None:
        """Write the backbone as a normal HF checkpoint plus comet.safetensors and comet_config.json."""
        from safetensors.torch import save_file

        from ..lora import has_lora, plain_state_dict

        os.makedirs(directory, exist_ok=True)
        if has_lora(self.backbone):  # a plain HF checkpoint: the adapters merged into the weights
            save_kwargs = {**save_kwargs, "state_dict": plain_state_dict(self.backbone)}
        self.backbone.save_pretrained(directory, **save_kwargs)
        state = {k: v.detach().contiguous().cpu() for k, v in self.comet_state_dict().items()}
        save_file(state, os.path.join(directory, COMET_WEIGHTS), metadata={"format": "pt"})
        meta = {"format_version": FORMAT_VERSION, "comet_config": self.config.to_dict(),
                "backbone_model_type": getattr(self.backbone.config, "model_type", None)}
        with open(os.path.join(directory, COMET_CONFIG), "w") as fh:
            json.dump(meta, fh, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory, **load_kwargs) -> "CoMeTForCausalLM":
        """Load what `save_pretrained` wrote. `load_kwargs` go to the backbone's from_pretrained."""
        from safetensors.torch import load_file

        directory = os.fspath(directory)
        cfg_path, w_path = os.path.join(directory, COMET_CONFIG), os.path.join(directory, COMET_WEIGHTS)
        if not os.path.isfile(cfg_path) or not os.path.isfile(w_path):
            raise BackboneError(
                f"{directory} is not a CoMeT checkpoint: {COMET_CONFIG} or {COMET_WEIGHTS} is missing. "
                "Fix: use a directory written by CoMeTForCausalLM.save_pretrained, or CoMeTForCausalLM.from_base "
                "for a plain Hugging Face model"
            )
        with open(cfg_path) as fh:
            meta = json.load(fh)
        if meta.get("format_version") != FORMAT_VERSION:
            raise BackboneError(f"{cfg_path} has format_version {meta.get('format_version')}; this code reads {FORMAT_VERSION}")
        model = cls(load_backbone(directory, **load_kwargs), CoMeTConfig.from_dict(meta["comet_config"]))
        ref = model.compress_embed
        state = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in load_file(w_path).items()}
        model.load_comet_state_dict(state)
        return model

    def comet_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_comet_state_dict(self, state: dict) -> None:
        expected = set(self.comet_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise BackboneError(
                f"CoMeT weights do not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}. "
                "Fix: load with the comet_config.json saved beside the weights"
            )
        self.load_state_dict(state, strict=False)

    def gradient_checkpointing_enable(self, **_) -> None:
        self.config.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.config.gradient_checkpointing = False

    def memory_parameters(self):
        """The parameters CoMeT adds (memory nets and the new token embeddings)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    # ------------------------------------------------------------------ parts of the backbone
    @property
    def layers(self):
        return self.backbone.model.layers

    @property
    def device(self) -> torch.device:
        return self.compress_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.compress_embed.dtype

    def _rope(self, positions: torch.Tensor):
        return self.backbone.model.rotary_emb(self.compress_embed, positions)

    @property
    def _stride(self) -> int:
        return self.config.temp_stride if self.config.uses_temp_memory else -1

    # ------------------------------------------------------------------ planning
    def _plan(self, text_start, text_end, close, text_valid, text_doc, index: MemoryIndex,
              prior: KeyMeta | None, comp_meta=None, mask_cache=None) -> SegmentPlan:
        """Plan a segment of the chunk whose text so far is described by text_valid/text_doc (B, n).

        prior: key meta of the chunk so far (None: this segment opens the chunk).
        comp_meta: (valid, doc) of the chunk's earlier compression rows, when closing in several segments.
        """
        cfg = self.config
        batch, device = text_valid.shape[0], text_valid.device
        n_read = cfg.global_mem_size if close else 0
        layout = segment_layout(text_start, text_end, self._stride, n_read, close)
        valid, doc = row_meta(layout, self._stride, text_valid, text_doc)
        mem_cos = mem_sin = None
        if prior is None:
            prior = KeyMeta.memory(*index.row_meta(cfg.global_mem_size, batch, device))
            if prior.valid.shape[1]:
                mem_cos, mem_sin = self._rope(prior.pos)
        n_mem = int((~prior.text).sum(dim=1).max()) if prior.text.numel() else 0
        is_text = (layout.kind == TEXT).to(device).expand(batch, -1)
        advance = valid & (layout.kind != COMPRESS).to(device) if cfg.neutral_start else valid
        keys = prior.extend(valid, doc, advance, is_text)
        positions = keys.pos[:, -layout.n_rows:]
        cos, sin = self._rope(positions)
        kind = layout.kind
        order = torch.argsort(kind, stable=True)
        plan = SegmentPlan(
            layout=layout, keys=keys, positions=positions, cos=cos, sin=sin, mem_cos=mem_cos, mem_sin=mem_sin,
            text_rows=layout.rows_of(TEXT).to(device), comp_rows=layout.rows_of(COMPRESS).to(device),
            readout_rows=layout.rows_of(READOUT).to(device), row_valid=valid, row_doc=doc,
            gather_rows=torch.argsort(order).to(device), masks={},
            simple=bool(keys.valid.all()) and not cfg.reset_memory_at_doc_boundaries,
            mask_cache=mask_cache if mask_cache is not None else {},
            layout_key=(text_start, text_end, close, n_mem),
        )
        if close:
            comp = layout.kind == COMPRESS
            cv, cd = valid[:, comp.to(device)], doc[:, comp.to(device)]
            if comp_meta is not None:
                cv, cd = torch.cat([comp_meta[0], cv], 1), torch.cat([comp_meta[1], cd], 1)
            self._plan_close(plan, index, cv, cd, last_real_doc(text_valid, text_doc))
        return plan

    def _plan_close(self, plan: SegmentPlan, index: MemoryIndex, comp_valid, comp_doc, last_doc) -> None:
        cfg = self.config
        reset = cfg.reset_memory_at_doc_boundaries
        if cfg.uses_global_memory and index.has_global and reset:
            plan.fresh = index.state_doc != last_doc
        if cfg.uses_global_memory and index.has_global and self.training and cfg.gate_repeat_max > 1:
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

    def _plan_chunks(self, text_valid, text_doc, mask_cache, size: int | None = None) -> list:
        """Closed-chunk plans for a whole sequence, in order: [(start, end, plan)], chunks of `size` (chunk_size)."""
        n, size = text_valid.shape[1], size or self.config.chunk_size
        index, plans = MemoryIndex(), []
        for start in range(0, n, size):
            end = min(start + size, n)
            plan = self._plan(0, end - start, True, text_valid[:, start:end], text_doc[:, start:end],
                              index, None, mask_cache=mask_cache)
            plans.append((start, end, plan))
            index = plan.next_index
        return plans

    # ------------------------------------------------------------------ one layer, one segment
    def _embed_rows(self, plan: SegmentPlan, text_embeds: torch.Tensor) -> torch.Tensor:
        batch, _, dim = text_embeds.shape
        n_comp, read = plan.comp_rows.numel(), plan.layout.args_of(READOUT).to(text_embeds.device)
        parts = [text_embeds,
                 self.compress_embed.expand(batch, n_comp, dim),
                 self.readout_embed[read].expand(batch, read.numel(), dim)]
        return torch.cat(parts, dim=1)[:, plan.gather_rows]

    def _layer(self, layer_idx: int, x: torch.Tensor, plan: SegmentPlan, cache: PrefixKV) -> torch.Tensor:
        layer = self.layers[layer_idx]
        window = layer_window(self.backbone, layer)
        mask = plan.mask(window, x.dtype)
        kwargs = {cache_keyword(layer): cache}
        gate = self.memory_nets[layer_idx].read_gate
        if gate is None or not plan.reads_non_text or plan.text_rows.numel() == 0:
            out = layer(x, attention_mask=mask, position_ids=plan.positions, position_embeddings=(plan.cos, plan.sin),
                        use_cache=False, **kwargs)
        else:
            with use_gated_read(layer) as impl:
                read = ReadSpec(impl, plan.text_rows, plan.text_keys, plan.text_mask(window, x.dtype), gate)
                out = layer(x, attention_mask=mask, position_ids=plan.positions,
                            position_embeddings=(plan.cos, plan.sin), use_cache=False, comet_read=read, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _prefix(self, layer_idx: int, mem: LayerMemory, plan: SegmentPlan, keep: bool) -> PrefixKV:
        rows = mem.rows()
        if rows is None:
            return PrefixKV(None, None, keep)
        return PrefixKV(*memory_kv(self.layers[layer_idx], rows, plan.mem_cos, plan.mem_sin), keep)

    def _next_memory(self, layer_idx: int, readouts, compressed, mem: LayerMemory, plan: SegmentPlan) -> LayerMemory:
        nets = self.memory_nets[layer_idx]
        memory, state, queue = mem.memory, mem.state, mem.queue
        if nets.global_mem is not None:
            memory, state = nets.global_mem.update(readouts, state, plan.fresh, plan.gate_repeats)
        if nets.temp_mem is not None:
            entries = nets.temp_mem.entries(compressed)
            pool = entries if queue is None else torch.cat([queue, entries], dim=1)
            queue = pool.gather(1, plan.fifo_index[..., None].expand(-1, -1, pool.shape[-1]))
        return LayerMemory(memory, state, queue)

    def _closed_cell(self, layer_idx: int, x: torch.Tensor, mem: LayerMemory, plan: SegmentPlan):
        """One decoder layer over one whole chunk, then that layer's memory update."""

        def cell(x, memory, state, queue):
            before = LayerMemory(memory, state, queue)
            y = self._layer(layer_idx, x, plan, self._prefix(layer_idx, before, plan, keep=False))
            after = self._next_memory(layer_idx, y[:, plan.readout_rows], y[:, plan.comp_rows], before, plan)
            return y, after.memory, after.state, after.queue

        args = (x, mem.memory, mem.state, mem.queue)
        if self.config.gradient_checkpointing and torch.is_grad_enabled():
            out = checkpoint(cell, *args, use_reentrant=False)
        else:
            out = cell(*args)
        return out[0], LayerMemory(*out[1:])

    # ------------------------------------------------------------------ output head
    def _logits(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Next-token logits at the given rows of a segment's final hidden states."""
        return self.backbone.lm_head(self.backbone.model.norm(x[:, rows]))

    def _head(self, x, plan: SegmentPlan, targets, want_logits: bool):
        def head(x):
            if targets is not None and not want_logits:
                # the LM head only where a label is: answer-only losses skip almost all of the vocab matmul
                labelled = targets != -100
                h = x[:, plan.text_rows][labelled]
                logits = self.backbone.lm_head(self.backbone.model.norm(h))
                return F.cross_entropy(logits.float(), targets[labelled], reduction="sum"), None
            logits = self._logits(x, plan.text_rows)
            if targets is None:
                return None, logits
            loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
            return loss_sum, logits if want_logits else None

        if self.config.gradient_checkpointing and torch.is_grad_enabled() and not want_logits and targets is not None:
            return checkpoint(head, x, use_reentrant=False)
        return head(x)

    # ------------------------------------------------------------------ public forward
    def forward(self, input_ids=None, labels=None, attention_mask=None, document_ids=None, inputs_embeds=None,
                return_logits: bool = True, schedule: str = "layer_major", chunk_ids=None) -> CoMeTOutput:
        """Train-time forward with full backpropagation through every chunk's memory.

        labels are shifted here, on the raw text, before any special token is inserted: text token
        i predicts text token i+1. Use -100 to ignore a position. attention_mask marks real tokens
        (padding may be anywhere). document_ids (B, N) with reset_memory_at_doc_boundaries keep
        attention and memory inside each document of a packed sequence.
        schedule: "layer_major" (every chunk at layer l, then layer l+1; the pipeline's order) or
        "chunk_major" (every layer of chunk t, then chunk t+1). Both compute the same function.
        chunk_ids (B, N): a chunk plan (``data_pipelines.chunking``, the paper's random chunking in
        training) instead of fixed chunks of chunk_size; each chunk of the plan runs as one chunk, padded
        to the plan's longest chunk. Labels are shifted on the raw text first, so no target is lost at a boundary.
        """
        embeds = self._input_embeds(input_ids, inputs_embeds)
        batch, n, _ = embeds.shape
        text_valid, text_doc = self._text_meta(batch, n, attention_mask, document_ids, embeds.device)
        targets = None if labels is None else self._shift_labels(labels, text_valid, text_doc)
        dest, slot = None, None
        if chunk_ids is not None:
            if tuple(chunk_ids.shape) != (batch, n):
                raise ValueError(f"chunk_ids has shape {tuple(chunk_ids.shape)}; it must match the input's {(batch, n)}")
            dest, slot, embeds, text_valid, text_doc, targets = self._follow_chunk_plan(
                chunk_ids.to(embeds.device), embeds, text_valid, text_doc, targets)
        plans = self._plan_chunks(text_valid, text_doc, mask_cache={}, size=slot)
        n_layers = len(self.layers)

        if schedule == "layer_major":
            xs = [self._embed_rows(p, embeds[:, s:e]) for s, e, p in plans]
            memory = []
            for layer_idx in range(n_layers):
                xs, mem = self.layer_block(layer_idx, xs, LayerMemory(), plans)
                memory.append(mem)
        elif schedule == "chunk_major":
            xs, memory = [], [LayerMemory() for _ in range(n_layers)]
            for s, e, p in plans:
                x = self._embed_rows(p, embeds[:, s:e])
                for layer_idx in range(n_layers):
                    x, memory[layer_idx] = self._closed_cell(layer_idx, x, memory[layer_idx], p)
                xs.append(x)
        else:
            raise ValueError(f"schedule={schedule!r}: use 'layer_major' or 'chunk_major'")

        loss_sum, num_tokens, logits = self.head_block(xs, plans, targets, return_logits)
        if dest is not None and logits is not None:  # back to the input's positions
            logits = logits.gather(1, dest[..., None].expand(-1, -1, logits.shape[-1]))
        out = CoMeTOutput(logits=logits, memory=memory)
        if targets is not None:
            out.num_tokens = num_tokens
            out.loss_sum = loss_sum
            out.loss = loss_sum / out.num_tokens.clamp(min=1)
        return out

    # ------------------------------------------------------------------ blocks of chunks (hooks for pipelines)
    def plan_sequence(self, input_ids=None, labels=None, attention_mask=None, document_ids=None,
                      inputs_embeds=None):
        """Plans of every chunk of the sequence, [(start, end, plan)], and the shifted targets (or None).

        Cheap (metadata only); a pipeline rank plans the whole sequence, then runs its own block of plans."""
        ref = input_ids if input_ids is not None else inputs_embeds
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if ref.dim() < 2 or ref.shape[1] == 0:
            raise ValueError(f"inputs must be (batch, length>0, ...); got shape {tuple(ref.shape)}")
        batch, n = ref.shape[:2]
        text_valid, text_doc = self._text_meta(batch, n, attention_mask, document_ids, ref.device)
        targets = None if labels is None else self._shift_labels(labels, text_valid, text_doc)
        return self._plan_chunks(text_valid, text_doc, mask_cache={}), targets

    def embed_block(self, plans, input_ids=None, inputs_embeds=None) -> list:
        """Layer-0 inputs of the chunks in `plans` (a contiguous block of `plan_sequence`'s list)."""
        if inputs_embeds is None:
            embed = self.backbone.model.embed_tokens
            return [self._embed_rows(p, embed(input_ids[:, s:e])) for s, e, p in plans]
        return [self._embed_rows(p, inputs_embeds[:, s:e]) for s, e, p in plans]

    def layer_block(self, layer_idx: int, xs: list, mem: LayerMemory, plans) -> tuple[list, LayerMemory]:
        """Decoder layer `layer_idx` over a block of consecutive chunks, carrying that layer's memory from
        chunk to chunk: `mem` is the memory before the block's first chunk; returns (outputs, memory after)."""
        xs = list(xs)
        for t, (_, _, p) in enumerate(plans):
            xs[t], mem = self._closed_cell(layer_idx, xs[t], mem, p)
            p.masks.clear()  # the next use is a layer later: do not hold every chunk's mask
        return xs, mem

    def head_block(self, xs: list, plans, targets, return_logits: bool = False):
        """(summed cross-entropy over the block's labelled tokens or None, labelled tokens or None, logits)."""
        loss_sum, logits, num_tokens = None, [], None
        for x, (s, e, p) in zip(xs, plans):
            part_loss, part_logits = self._head(x, p, None if targets is None else targets[:, s:e], return_logits)
            if part_loss is not None:
                loss_sum = part_loss if loss_sum is None else loss_sum + part_loss
            if part_logits is not None:
                logits.append(part_logits)
        if targets is not None and plans:
            num_tokens = (targets[:, plans[0][0]:plans[-1][1]] != -100).sum()
        return loss_sum, num_tokens, torch.cat(logits, dim=1) if logits else None

    def _follow_chunk_plan(self, chunk_ids, embeds, text_valid, text_doc, targets):
        """Spread the sequence so that each chunk of the plan fills one slot of the plan's longest chunk (the rest
        is padding). Attention never crosses a chunk and positions count real rows only, so a shorter chunk
        than chunk_size computes what chunk_size would for the same tokens."""
        dest, length, slot = chunk_plan_layout(chunk_ids, self.config.chunk_size)
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

    def _input_embeds(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            if input_ids.dim() != 2 or input_ids.shape[1] == 0:
                raise ValueError(f"input_ids must be (batch, length>0); got shape {tuple(input_ids.shape)}")
            inputs_embeds = self.backbone.model.embed_tokens(input_ids)
        return inputs_embeds

    def _text_meta(self, batch, n, attention_mask, document_ids, device):
        valid = torch.ones(batch, n, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
        if self.config.reset_memory_at_doc_boundaries and document_ids is not None:
            doc = document_ids.long()
        else:
            doc = torch.zeros(batch, n, dtype=torch.long, device=device)
        return valid, doc

    @staticmethod
    def _shift_labels(labels, text_valid, text_doc) -> torch.Tensor:
        targets = torch.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]
        keep = text_valid.clone()
        keep[:, :-1] &= text_valid[:, 1:] & (text_doc[:, :-1] == text_doc[:, 1:])
        return targets.masked_fill(~keep, -100)

    # ------------------------------------------------------------------ inference
    def stream(self):
        """A chunk-major streaming session: feed tokens, read logits, keep only the memory."""
        from .streaming import CoMeTStream

        return CoMeTStream(self)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int = 32, **kwargs) -> torch.Tensor:
        """Greedy or sampled continuation; returns prompt + new tokens, like HF decoder-only models."""
        from .streaming import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)
