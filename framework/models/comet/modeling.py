"""CoMeTForCausalLM: a Hugging Face causal LM made chunk-recurrent with per-layer memory."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from ..hf_compat import cache_keyword
from ..linear_cross_entropy import fusable, linear_cross_entropy

from .attention import ChunkKV, PrefixKV, ReadSpec, SomeRowsKV, base_implementation, memory_kv, use_gated_read
from .backbone import BackboneError, check_backbone, embedding_stats, layer_window, load_backbone, use_maskable_attention
from .config import CoMeTConfig
from .decode_head import few_row_logits
from .hf_config import MODEL_TYPE, CoMeTHFConfig
from .layout import READOUT
from .memory import LayerMemory, LayerMemoryNets, LowRankAdapter
from .planning import FEW_ROWS, SegmentPlan, follow_chunk_plan, plan_chunks, plan_segment, temp_stride
from .split_attention import split_available

COMET_WEIGHTS = "comet.safetensors"
IGNORED_FORWARD_ARGS = {"use_cache", "return_dict"}  # transformers callers pass them; a full forward needs neither
COMET_CONFIG = "comet_config.json"  # the marker of a CoMeT folder (both layouts); CoMeT's fields live in config.json


def is_legacy_comet_dir(directory) -> bool:
    """A CoMeT folder in the layout written before CoMeT was a transformers model type: the backbone's own
    checkpoint plus comet.safetensors and comet_config.json."""
    directory = os.fspath(directory)
    return os.path.isfile(os.path.join(directory, COMET_CONFIG)) and os.path.isfile(os.path.join(directory, COMET_WEIGHTS))
FORMAT_VERSION = 2  # 2: a transformers checkpoint of model type longctx_comet; 1: backbone + comet.safetensors


@dataclass
class CoMeTOutput(ModelOutput):
    """loss: mean cross-entropy over text tokens; loss_sum and num_tokens give the global mean across
    ranks; logits: (B, N, vocab) over text positions only; memory: each layer's memory after the input."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    memory: list | None = None


class CoMeTForCausalLM(PreTrainedModel, GenerationMixin):
    """A pretrained causal LM turned into a chunk-recurrent model with constant memory.

    Every decoder layer gets its own memory stream: a gated global memory written by readout
    tokens and a FIFO temporary memory written by compression tokens. Both are injected into the
    next chunk at the same layer as prefix K/V.

    A transformers model of its own type (`longctx_comet`, registered with `AutoConfig` and
    `AutoModelForCausalLM` when `framework` is imported): `config` is a `CoMeTHFConfig` holding the
    backbone's config and CoMeT's fields (`config.chunk_size` reads the running `CoMeTConfig`).
    Build one with `from_base`; load one with `from_pretrained` or `AutoModelForCausalLM.from_pretrained`.
    """

    config_class = CoMeTHFConfig
    base_model_prefix = "comet"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: CoMeTHFConfig, backbone: nn.Module | None = None):
        if isinstance(config, CoMeTConfig):
            raise TypeError("CoMeTForCausalLM(config) takes a CoMeTHFConfig; to wrap a causal LM use "
                            "CoMeTForCausalLM.from_base(base_model, CoMeTConfig(...))")
        super().__init__(config)
        if backbone is None:  # from a saved config (from_pretrained): the backbone's weights load after
            from transformers import AutoModelForCausalLM

            backbone = AutoModelForCausalLM.from_config(config.backbone_config)
        check_backbone(backbone)
        use_maskable_attention(backbone)
        config = config.comet_config
        config.validate()
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
        if getattr(backbone, "generation_config", None) is not None:
            self.generation_config = copy.deepcopy(backbone.generation_config)
        self.post_init()

    def _init_weights(self, module) -> None:
        """Nothing: the backbone comes initialised (or loaded) and CoMeT's own weights are set in __init__."""

    @property
    def comet_config(self) -> CoMeTConfig:
        """The CoMeT hyper-parameters the model runs with (also readable as `config.<field>`)."""
        return self.config.comet_config

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
        backbone = load_backbone(base, **load_kwargs)
        check_backbone(backbone)
        return cls(CoMeTHFConfig.from_parts(backbone.config, config or CoMeTConfig()), backbone=backbone)

    def save_pretrained(self, directory, tokenizer=None, **save_kwargs) -> None:
        """Write a transformers checkpoint of model type `longctx_comet`: config.json (the backbone's config and
        CoMeT's fields inside) and safetensors of every weight, plus the tokenizer if given. LoRA adapters are
        merged into the backbone's weights, so the folder holds no adapter."""
        from ..lora import has_lora, plain_state_dict

        self.config.backbone = self.backbone.config.to_dict()  # the backbone's config as it is now
        if has_lora(self.backbone) and "state_dict" not in save_kwargs:
            state = {f"backbone.{k}": v for k, v in plain_state_dict(self.backbone).items()}
            save_kwargs = {**save_kwargs, "state_dict": {**state, **self.comet_state_dict()}}
        super().save_pretrained(directory, **save_kwargs)
        with open(os.path.join(directory, COMET_CONFIG), "w") as fh:
            json.dump({"format_version": FORMAT_VERSION, "model_type": MODEL_TYPE,
                       "note": "CoMeT's fields are in config.json under 'comet'"}, fh, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "CoMeTForCausalLM":
        """Load a CoMeT folder: what `save_pretrained` writes, or the older layout (the backbone's checkpoint plus
        comet.safetensors and comet_config.json). Keyword arguments go to transformers' `from_pretrained`."""
        directory = os.fspath(pretrained_model_name_or_path)
        if is_legacy_comet_dir(directory):
            return cls._from_legacy_dir(directory, **kwargs)
        config_file = os.path.join(directory, "config.json")
        if os.path.isdir(directory):
            kind = None
            if os.path.isfile(config_file):
                with open(config_file) as fh:
                    kind = json.load(fh).get("model_type")
            if kind != MODEL_TYPE:
                what = "has no config.json" if kind is None else f"holds a plain {kind!r} model"
                raise BackboneError(
                    f"{directory} is not a CoMeT checkpoint: it {what}. Fix: use a directory written by "
                    "CoMeTForCausalLM.save_pretrained, or CoMeTForCausalLM.from_base for a plain Hugging Face model")
        return super().from_pretrained(directory, *args, **kwargs)

    @classmethod
    def _from_legacy_dir(cls, directory: str, **load_kwargs) -> "CoMeTForCausalLM":
        from safetensors.torch import load_file

        cfg_path, w_path = os.path.join(directory, COMET_CONFIG), os.path.join(directory, COMET_WEIGHTS)
        with open(cfg_path) as fh:
            meta = json.load(fh)
        if meta.get("format_version") != 1 or "comet_config" not in meta:
            raise BackboneError(f"{cfg_path} has format_version {meta.get('format_version')}; this code reads 1 (this "
                                f"layout) and {FORMAT_VERSION}. Fix: save the model again with this version")
        model = cls.from_base(load_backbone(directory, **load_kwargs), CoMeTConfig.from_dict(meta["comet_config"]))
        ref = model.compress_embed
        state = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in load_file(w_path).items()}
        model.load_comet_state_dict(state)
        return model

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self):
        return self.backbone.get_output_embeddings()

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
        return temp_stride(self.config)

    # ------------------------------------------------------------------ planning (see planning.py)
    def _plan(self, *args, **kwargs) -> SegmentPlan:
        """`planning.plan_segment` with this model's config, RoPE and training mode (streaming plans segments)."""
        return plan_segment(self.config, self._rope, self.training, *args, **kwargs)

    def _plan_chunks(self, text_valid, text_doc, mask_cache, size: int | None = None) -> list:
        """Closed-chunk plans for a whole sequence, in order: [(start, end, plan)] (`planning.plan_chunks`)."""
        return plan_chunks(self.config, self._rope, self.training, text_valid, text_doc, mask_cache, size)

    # ------------------------------------------------------------------ one layer, one segment
    def _embed_rows(self, plan: SegmentPlan, text_embeds: torch.Tensor) -> torch.Tensor:
        batch, _, dim = text_embeds.shape
        if plan.comp_rows.numel() == 0 and plan.readout_rows.numel() == 0:
            return text_embeds
        n_comp, read = plan.comp_rows.numel(), plan.layout.args_of(READOUT).to(text_embeds.device)
        parts = [text_embeds,
                 self.compress_embed.expand(batch, n_comp, dim),
                 self.readout_embed[read].expand(batch, read.numel(), dim)]
        return torch.cat(parts, dim=1)[:, plan.gather_rows]

    def _layer(self, layer_idx: int, x: torch.Tensor, plan: SegmentPlan, cache: PrefixKV | ChunkKV,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder layer `layer_idx` over one segment. rows: the rows whose outputs are read (None: every row); the
        others' outputs are not computed and hold their input (`_some_rows`)."""
        if rows is not None and 2 * rows.numel() <= plan.layout.n_rows:
            return self._some_rows(layer_idx, x, plan, cache, rows)
        layer = self.layers[layer_idx]
        window = layer_window(self.backbone, layer)
        prefix = plan.prefix_only(window)  # decoding: no mask, each row attends over a view of the keys it sees
        split = not prefix and plan.unmasked(window) and self._splits(layer, x)  # no mask: earlier keys + causal
        mask = None if prefix or split else plan.mask(window, x.dtype)
        limits = plan.key_limits() if prefix and plan.layout.n_rows > 1 else None
        n_text = plan.text_rows.numel()
        streaming = isinstance(cache, ChunkKV)
        if streaming:
            cache.text_rows = plan.text_index if n_text else None
        kwargs = {cache_keyword(layer): cache}
        gate = self.memory_nets[layer_idx].read_gate
        gate = None if gate is None else gate * self.config.read_gate_scale
        gated = gate is not None and plan.reads_non_text and n_text > 0
        if not gated and limits is None and not split:
            out = layer(x, attention_mask=mask, position_ids=plan.positions, position_embeddings=(plan.cos, plan.sin),
                        use_cache=False, **kwargs)
        else:
            with use_gated_read(layer) as impl:
                read = ReadSpec(impl, None, None, None, None, key_limits=limits, split=split)
                if gated:
                    # a single text row in a prefix-only segment is the newest text key: it sees every text key
                    text_mask = None if split or (prefix and n_text == 1) else plan.text_mask(window, x.dtype)
                    text_kv = cache.text_kv if streaming and cache.track_text else None
                    opens = plan.keys.valid.shape[1] - plan.keys.n_other == n_text  # every text key is this segment's
                    read = ReadSpec(impl, plan.text_rows, None if text_kv else plan.text_keys, text_mask, gate,
                                    key_limits=limits, text_kv=text_kv, split=split,
                                    scratch=plan.masks.setdefault("split_read", {}) if split and opens else None)
                out = layer(x, attention_mask=mask, position_ids=plan.positions,
                            position_embeddings=(plan.cos, plan.sin), use_cache=False, comet_read=read, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _some_rows(self, layer_idx: int, x: torch.Tensor, plan: SegmentPlan, cache: PrefixKV | ChunkKV,
                   rows: torch.Tensor) -> torch.Tensor:
        """The layer over a segment whose outputs are read at `rows` only (streaming's last layer, where only the
        memory rows and the logits' rows are read): every row's K/V, as the layer computes them, go to the cache
        (later rows and tokens attend over them), but queries, attention and the MLP run for `rows` alone.
        Returns x with `rows` replaced by their outputs; the other rows keep their input and must not be read."""
        layer = self.layers[layer_idx]
        window = layer_window(self.backbone, layer)
        streaming = isinstance(cache, ChunkKV)
        if streaming:
            cache.text_rows = plan.text_index if plan.text_rows.numel() else None
        keys, values = memory_kv(layer, x, plan.cos, plan.sin)
        if rows.numel() == 0:  # nothing read: the rows' K/V only
            cache.update(keys, values, layer_idx)
            return x
        kwargs = {cache_keyword(layer): SomeRowsKV(cache, keys, values, rows)}
        mask = plan.rows_mask(rows, window, x.dtype)
        cos, sin, positions = plan.cos[:, rows], plan.sin[:, rows], plan.positions[:, rows]
        gate = self.memory_nets[layer_idx].read_gate
        is_text = torch.isin(rows, plan.text_rows)
        if gate is None or not plan.reads_non_text or not bool(is_text.any()):
            out = layer(x[:, rows], attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin),
                        use_cache=False, **kwargs)
        else:
            with use_gated_read(layer) as impl:
                which = torch.searchsorted(plan.text_rows, rows[is_text])  # the kept text rows among the text rows
                newest = which.numel() == 1 and int(which) == plan.text_rows.numel() - 1  # sees every text key
                text_mask = None if newest and plan.unmasked(window) else plan.text_mask(window, x.dtype)[:, :, which]
                text_kv = cache.text_kv if streaming and cache.track_text else None
                read = ReadSpec(impl, is_text.nonzero().flatten(), None if text_kv else plan.text_keys, text_mask,
                                gate * self.config.read_gate_scale, text_kv=text_kv)
                out = layer(x[:, rows], attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin),
                            use_cache=False, comet_read=read, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return x.index_copy(1, rows, out)

    def _splits(self, layer, x: torch.Tensor) -> bool:
        """Whether this layer's unmasked attention may run as `split_attention`: the backbone uses sdpa (eager stays
        the plain reference path), the device has the fused kernel, and no attention dropout is active."""
        dropout = self.training and getattr(layer.self_attn, "attention_dropout", 0.0) > 0
        return not dropout and split_available(x.device) and base_implementation(layer) == "sdpa"

    def _prefix(self, layer_idx: int, mem: LayerMemory, plan: SegmentPlan, keep: bool,
                capacity: int = 0) -> PrefixKV | ChunkKV:
        """The memory rows' K/V for one layer. keep=True (streaming): a `ChunkKV` with room for `capacity` rows
        after the memory rows, keeping the text rows' K/V apart when the layer has a read gate."""
        rows = mem.rows()
        kv = (None, None) if rows is None else memory_kv(self.layers[layer_idx], rows, plan.mem_cos, plan.mem_sin)
        if keep:
            n_mem = 0 if rows is None else rows.shape[1]
            track = self.memory_nets[layer_idx].read_gate is not None
            return ChunkKV(*kv, n_mem + capacity, track_text=track, text_capacity=self.config.chunk_size)
        return PrefixKV(*kv, keep)

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

    def _closed_cell(self, layer_idx: int, x: torch.Tensor, mem: LayerMemory, plan: SegmentPlan,
                     rows: torch.Tensor | None = None):
        """One decoder layer over one whole chunk, then that layer's memory update. rows: as in `_layer`."""

        def cell(x, memory, state, queue):
            before = LayerMemory(memory, state, queue)
            y = self._layer(layer_idx, x, plan, self._prefix(layer_idx, before, plan, keep=False), rows)
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
        return few_row_logits(self.backbone.lm_head, self.backbone.model.norm(x[:, rows]), FEW_ROWS)

    def _head(self, x, plan: SegmentPlan, targets, want_logits: bool):
        lm_head = self.backbone.lm_head
        if targets is not None and not want_logits and fusable(lm_head):
            # the loss a block of rows at a time, no logits kept; only where a label is
            labelled = targets != -100
            hidden = self.backbone.model.norm(x[:, plan.text_rows][labelled])
            return linear_cross_entropy(hidden, lm_head, targets[labelled]), None

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
                return_logits: bool = True, schedule: str = "layer_major", chunk_ids=None, **unused) -> CoMeTOutput:
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
        ignored = {k for k, v in unused.items() if k in IGNORED_FORWARD_ARGS or v is None or v is False}
        if set(unused) - ignored:
            raise TypeError(f"CoMeTForCausalLM.forward got unsupported argument(s) {sorted(set(unused) - ignored)}. "
                            "Fix: pass input_ids, labels, attention_mask, document_ids, inputs_embeds or chunk_ids; "
                            "for decoding use model.stream() or generate")
        embeds = self._input_embeds(input_ids, inputs_embeds)
        batch, n, _ = embeds.shape
        text_valid, text_doc = self._text_meta(batch, n, attention_mask, document_ids, embeds.device)
        targets = None if labels is None else self._shift_labels(labels, text_valid, text_doc)
        dest, slot = None, None
        if chunk_ids is not None:
            if tuple(chunk_ids.shape) != (batch, n):
                raise ValueError(f"chunk_ids has shape {tuple(chunk_ids.shape)}; it must match the input's {(batch, n)}")
            dest, slot, embeds, text_valid, text_doc, targets = follow_chunk_plan(
                self.config.chunk_size, chunk_ids.to(embeds.device), embeds, text_valid, text_doc, targets)
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
    def generate(self, input_ids=None, generation_config=None, logits_processor=None, stopping_criteria=None,
                 **kwargs):
        """Greedy or sampled continuation with transformers' arguments (see `generation.py`); returns the prompts
        as given followed by the new tokens, like transformers' decoder-only models."""
        from .generation import generate

        return generate(self, input_ids, generation_config, logits_processor, stopping_criteria, **kwargs)
