"""The encoder-decoder skeleton that RAM and COMI share (methods.md §6), over any Hugging Face
decoder-only family (Llama, Mistral, Qwen2, Qwen3):

- the encoder is the backbone's first `encoder_layers` layers (its own trainable copy);
- the query vector is the mean of the query's encoder states;
- an alignment module maps compressed vectors into the decoder's input space;
- the decoder (the whole backbone) reads ``[memory ; question ; answer]``; the loss is on the answer.

    model = CompressorForQA.from_base("path/to/causal-lm", CompressorConfig(method="comi", ratio=8))
    out = model(**batch)                      # out.loss_sum / out.num_tokens, out.aux_loss
    answers = model.generate(**batch_without_answers, ratio=8, max_new_tokens=12)
    model.save_pretrained("qa-model", tokenizer=tok); CompressorForQA.from_pretrained("qa-model")

A saved directory is the decoder as a plain Hugging Face checkpoint (``config.json``,
``model.safetensors``, LoRA folded in), plus ``compressor.safetensors`` (encoder and alignment)
and ``compressor_config.json``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from framework.models.compression import comi, ram
from framework.models.compression.alignment import build_alignment
from framework.models.compression.config import CompressorConfig
from framework.models.compression.lora import add_lora, lora_parameters, merged_state_dict

COMPRESSOR_CONFIG = "compressor_config.json"
COMPRESSOR_WEIGHTS = "compressor.safetensors"
FORMAT_VERSION = 1


class CompressorError(ValueError):
    """A compressor cannot be built or loaded; the message says why and how to fix it."""


@dataclass
class Compressed:
    """memory[b]: [m_b, d] decoder-space vectors of sample b. aux_loss: RAM's contrastive loss (0 for
    COMI). context_tokens / memory_slots: per sample, for the compression ratio. kept[b]: RAM's kept
    segment indices; positives[b]: the segments holding the answer (when the batch says)."""

    memory: list
    aux_loss: torch.Tensor
    context_tokens: list
    memory_slots: list
    kept: list = field(default_factory=list)
    positives: list = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return sum(self.context_tokens) / max(1, sum(self.memory_slots))

    def answer_segments_read(self) -> tuple[int, int]:
        """(answer-holding segments that were read closely, answer-holding segments), summed over the batch:
        RAM's answer-segment recall is their quotient. (0, 0) without segment labels (COMI, or no evidence)."""
        hits = total = 0
        for kept, positives in zip(self.kept, self.positives):
            total += len(positives)
            hits += len(set(kept) & set(positives))
        return hits, total

    @property
    def answer_segment_recall(self) -> float | None:
        """The share of answer-holding segments read closely (None without segment labels)."""
        hits, total = self.answer_segments_read()
        return hits / total if total else None


@dataclass
class CompressorOutput:
    loss_sum: torch.Tensor
    num_tokens: torch.Tensor
    aux_loss: torch.Tensor
    compressed: Compressed


def encoder_config(backbone_config, layers: int):
    cfg = copy.deepcopy(backbone_config)
    if layers > cfg.num_hidden_layers:
        raise CompressorError(f"compression.encoder_layers={layers} exceeds the backbone's {cfg.num_hidden_layers} "
                              f"layers. Fix: --compression.encoder_layers {cfg.num_hidden_layers} or fewer")
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[:layers]
    return cfg


def _valid(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ids[mask.bool()]


class CompressorForQA(nn.Module):
    """RAM or COMI (per ``config.method``) over one Hugging Face causal LM."""

    def __init__(self, decoder: nn.Module, config: CompressorConfig, encoder: nn.Module | None = None):
        super().__init__()
        from transformers import AutoModel

        self.config = config
        self.decoder = decoder
        if encoder is None:
            encoder = AutoModel.from_config(encoder_config(decoder.config, config.encoder_layers))
            state = decoder.base_model.state_dict()
            encoder.load_state_dict({k: v for k, v in state.items() if k in encoder.state_dict()}, strict=False)
        self.encoder = encoder.to(dtype=decoder.dtype, device=decoder.device)
        self.align = build_alignment(config.alignment, decoder, config.encoder_layers).to(
            dtype=decoder.dtype, device=decoder.device)
        if config.lora_rank:
            if not add_lora(self.decoder, set(config.lora_targets), config.lora_rank, config.lora_alpha):
                raise CompressorError(f"compression.lora_targets={config.lora_targets} name no Linear layer of the "
                                      "decoder. Fix: e.g. ['q_proj', 'k_proj', 'v_proj', 'o_proj']")

    # ------------------------------------------------------------------ building, saving, loading
    @classmethod
    def from_base(cls, base, config: CompressorConfig | None = None, **load_kwargs) -> "CompressorForQA":
        """Encoder, alignment and decoder from one causal LM (an instance, a directory or a model id)."""
        from framework.models.comet.backbone import load_backbone

        return cls(load_backbone(base, **load_kwargs), config or CompressorConfig())

    def save_pretrained(self, directory, tokenizer=None) -> None:
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        self.decoder.save_pretrained(directory, state_dict=merged_state_dict(self.decoder), safe_serialization=True)
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"align.{k}": v for k, v in self.align.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                  os.path.join(directory, COMPRESSOR_WEIGHTS), metadata={"format": "pt"})
        meta = {"format_version": FORMAT_VERSION, "compressor_config": self.config.to_dict(),
                "encoder_config": self.encoder.config.to_dict()}
        with open(os.path.join(directory, COMPRESSOR_CONFIG), "w") as fh:
            json.dump(meta, fh, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory, **load_kwargs) -> "CompressorForQA":
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        directory = os.fspath(directory)
        cfg_path, w_path = os.path.join(directory, COMPRESSOR_CONFIG), os.path.join(directory, COMPRESSOR_WEIGHTS)
        if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
            raise CompressorError(f"{directory} is not a compressor checkpoint: {COMPRESSOR_CONFIG} or "
                                  f"{COMPRESSOR_WEIGHTS} is missing. Fix: use a directory written by "
                                  "CompressorForQA.save_pretrained (a RAM or COMI run's model)")
        with open(cfg_path) as fh:
            meta = json.load(fh)
        if meta.get("format_version") != FORMAT_VERSION:
            raise CompressorError(f"{cfg_path} has format_version {meta.get('format_version')}; "
                                  f"this code reads {FORMAT_VERSION}")
        decoder = AutoModelForCausalLM.from_pretrained(directory, **load_kwargs)
        enc_meta = dict(meta["encoder_config"])
        enc_cfg = AutoConfig.for_model(enc_meta.pop("model_type"), **enc_meta)
        encoder = AutoModel.from_config(enc_cfg)
        model = cls(decoder, CompressorConfig.from_dict(meta["compressor_config"]), encoder=encoder)
        state = load_file(w_path)
        for prefix, module in (("encoder.", model.encoder), ("align.", model.align)):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            missing, unexpected = module.load_state_dict(part, strict=False)
            missing = [k for k in missing if not k.endswith("inv_freq")]
            if missing or unexpected:
                raise CompressorError(f"{w_path} does not match this model's {prefix[:-1]}: missing {missing[:4]}, "
                                      f"unexpected {unexpected[:4]}. Fix: load with the {COMPRESSOR_CONFIG} saved beside it")
        return model

    # ------------------------------------------------------------------ parts
    @property
    def device(self) -> torch.device:
        return self.decoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.dtype

    def decoder_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(ids)

    def lora_parameters(self):
        return lora_parameters(self.decoder)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.decoder.gradient_checkpointing_enable(**kwargs)
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def _encode(self, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states of right-padded rows: ([R, T, d], mask [R, T])."""
        width = max(int(r.numel()) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            ids[i, :r.numel()], mask[i, :r.numel()] = r, True
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return hidden, mask

    def _align(self, vectors: list) -> list:
        """Align each sample's compressed vectors (one padded batch through the alignment)."""
        if not vectors:
            return []
        width = max(1, max(int(v.shape[0]) for v in vectors))
        x = vectors[0].new_zeros((len(vectors), width, vectors[0].shape[-1]))
        mask = torch.zeros((len(vectors), width), dtype=torch.bool, device=x.device)
        for i, v in enumerate(vectors):
            x[i, :v.shape[0]], mask[i, :v.shape[0]] = v, True
        out = self.align(x, mask)
        return [out[i, :v.shape[0]] for i, v in enumerate(vectors)]

    # ------------------------------------------------------------------ compression
    def compress(self, context_ids, context_mask, question_ids, question_mask, evidence_mask=None,
                 ratio: float | None = None, keep_fraction: float | None = None) -> Compressed:
        """Each sample's memory. ratio: the target compression (COMI: tokens per slot; RAM: turned into
        a keep fraction). keep_fraction: RAM's rho directly (wins over ratio)."""
        if self.config.method == "ram":
            if keep_fraction is None:
                keep_fraction = (self.config.keep_fraction if ratio is None
                                 else ram.keep_fraction_for_ratio(float(ratio), self.config.segment_size))
            return self._compress_ram(context_ids, context_mask, question_ids, question_mask, evidence_mask,
                                      keep_fraction)
        return self._compress_comi(context_ids, context_mask, question_ids, question_mask,
                                   int(round(ratio)) if ratio is not None else self.config.ratio)

    def _compress_ram(self, context_ids, context_mask, question_ids, question_mask, evidence_mask, rho):
        cfg, seg = self.config, self.config.segment_size
        rows, owners, bounds_of = [], [], []
        for b in range(context_ids.shape[0]):
            ctx = _valid(context_ids[b], context_mask[b])
            bounds = ram.segment_bounds(int(ctx.numel()), seg)
            bounds_of.append((ctx, bounds))
            rows.append(_valid(question_ids[b], question_mask[b]))
            owners.append(len(rows) - 1)
            rows.extend(ctx[s:e] for s, e in bounds)
        hidden, mask = self._encode(rows)
        pooled = ram.masked_mean(hidden, mask)
        # every row's skim vector at once, against its own sample's query vector
        row_query = torch.cat([pooled[q_row].expand(len(b) + 1, -1) for q_row, (_, b) in zip(owners, bounds_of)])
        skim_rows = ram.skim_vector(hidden, mask, row_query)
        memory_parts, kept_all, positives, skims = [], [], [], []
        query_vecs, seg_vecs, seg_masks, pos_masks = [], [], [], []
        n_max = max(1, max(len(b) for _, b in bounds_of))
        for b, (ctx, bounds) in enumerate(bounds_of):
            q_row = owners[b]
            n = len(bounds)
            q = pooled[q_row]
            segs = pooled[q_row + 1:q_row + 1 + n]
            scores = F.cosine_similarity(segs, q.unsqueeze(0), dim=-1, eps=1e-8) if n else segs.new_zeros(0)
            kept = ram.select_segments(scores, rho) if n else torch.zeros(0, dtype=torch.long)
            kept_set = set(kept.tolist())
            kept_all.append(kept.tolist())
            skim_idx = [i for i in range(n) if i not in kept_set]
            skims.append(skim_rows[[q_row + 1 + i for i in skim_idx]] if skim_idx
                         else hidden.new_zeros((0, hidden.shape[-1])))
            memory_parts.append((ctx, bounds, kept_set, skim_idx))
            pos = torch.zeros(n_max, dtype=torch.bool, device=self.device)
            if evidence_mask is not None:
                ev = _valid(evidence_mask[b].to(self.device), context_mask[b].to(self.device))
                pos[torch.div(ev.nonzero().flatten(), seg, rounding_mode="floor")] = True  # segments holding evidence
            positives.append(pos[:n].nonzero().flatten().tolist())
            query_vecs.append(q)
            padded = segs.new_zeros((n_max, segs.shape[-1]))
            padded[:n] = segs
            seg_vecs.append(padded)
            valid = torch.zeros(n_max, dtype=torch.bool, device=self.device)
            valid[:n] = True
            seg_masks.append(valid)
            pos_masks.append(pos)
        aux = pooled.new_zeros(())
        if evidence_mask is not None and cfg.contrastive_weight > 0:
            aux = ram.contrastive_loss(torch.stack(query_vecs), torch.stack(seg_vecs), torch.stack(seg_masks),
                                       torch.stack(pos_masks), cfg.tau) * cfg.contrastive_weight
        aligned = self._align(skims)
        memory, slots = [], []
        for (ctx, bounds, kept_set, skim_idx), skim in zip(memory_parts, aligned):
            where = {i: j for j, i in enumerate(skim_idx)}
            pieces = [self.decoder_embed(ctx[s:e]) if i in kept_set else skim[where[i]:where[i] + 1]
                      for i, (s, e) in enumerate(bounds)]
            mem = torch.cat(pieces) if pieces else hidden.new_zeros((0, hidden.shape[-1]))
            memory.append(mem)
            slots.append(int(mem.shape[0]))
        return Compressed(memory, aux, [int(c.numel()) for c, _ in bounds_of], slots, kept_all, positives)

    def _compress_comi(self, context_ids, context_mask, question_ids, question_mask, ratio: int):
        cfg = self.config
        rows, spans = [], []  # spans[b] = [(row, chunk length, question length), ...]
        for b in range(context_ids.shape[0]):
            ctx, q = _valid(context_ids[b], context_mask[b]), _valid(question_ids[b], question_mask[b])
            spans.append([])
            for start in range(0, max(1, int(ctx.numel())), cfg.chunk_tokens):
                piece = ctx[start:start + cfg.chunk_tokens]
                if piece.numel() == 0:
                    continue
                rows.append(torch.cat([piece, q]))
                spans[b].append((len(rows) - 1, int(piece.numel()), int(q.numel())))
        hidden, _ = self._encode(rows) if rows else (None, None)
        merged = []
        for chunks in spans:
            parts = []
            for row, n, qn in chunks:
                h = hidden[row, :n]
                q_mean = hidden[row, n:n + qn].mean(dim=0) if qn else h.mean(dim=0)
                parts.append(comi.comi_compress(h, q_mean, ratio, cfg.alpha, cfg.beta, coarse=cfg.coarse,
                                                fine=cfg.fine, redundancy=cfg.redundancy,
                                                merge_alpha=cfg.merge_alpha, merge_beta=cfg.merge_beta))
            d = self.decoder.config.hidden_size
            merged.append(torch.cat(parts) if parts else torch.zeros((0, d), device=self.device, dtype=self.dtype))
        memory = self._align(merged)
        aux = (hidden.new_zeros(()) if hidden is not None else torch.zeros((), device=self.device))
        tokens = [sum(n for _, n, _ in chunks) for chunks in spans]
        return Compressed(memory, aux, tokens, [int(m.shape[0]) for m in memory])

    def token_memory(self, context_ids, context_mask, keep_tokens=None) -> Compressed:
        """No compression: the context's own token embeddings, all of them or the first `keep_tokens`
        (truncation to a compressor's budget): one int for every sample, or one per sample."""
        memory, tokens = [], []
        for b in range(context_ids.shape[0]):
            ctx = _valid(context_ids[b], context_mask[b])
            tokens.append(int(ctx.numel()))
            if keep_tokens is not None:
                ctx = ctx[:int(keep_tokens if isinstance(keep_tokens, int) else keep_tokens[b])]
            memory.append(self.decoder_embed(ctx))
        zero = torch.zeros((), device=self.device)
        return Compressed(memory, zero, tokens, [int(m.shape[0]) for m in memory])

    # ------------------------------------------------------------------ the decoder
    def answer_loss(self, memory: list, question_ids, question_mask, answer_ids, answer_mask):
        """(sum of answer-token cross-entropies, answer tokens) for [memory ; question ; answer]."""
        seqs, targets, where = [], [], []
        for b, mem in enumerate(memory):
            q = _valid(question_ids[b], question_mask[b])
            a = _valid(answer_ids[b], answer_mask[b])
            seqs.append(torch.cat([mem, self.decoder_embed(q), self.decoder_embed(a)]))
            start = mem.shape[0] + q.numel()
            where.append(torch.arange(start - 1, start - 1 + a.numel(), device=self.device))
            targets.append(a)
        x, mask = _right_pad(seqs)
        hidden = self.decoder.base_model(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        rows = torch.cat([hidden[b, w] for b, w in enumerate(where)])
        logits = self.decoder.get_output_embeddings()(rows).float()
        tgt = torch.cat(targets)
        return F.cross_entropy(logits, tgt, reduction="sum"), torch.tensor(tgt.numel(), device=self.device)

    def forward(self, context_ids, context_mask, question_ids, question_mask, answer_ids, answer_mask,
                evidence_mask=None, ratio: float | None = None, keep_fraction: float | None = None,
                **_) -> CompressorOutput:
        comp = self.compress(context_ids, context_mask, question_ids, question_mask, evidence_mask, ratio,
                             keep_fraction)
        loss_sum, count = self.answer_loss(comp.memory, question_ids, question_mask, answer_ids, answer_mask)
        return CompressorOutput(loss_sum, count, comp.aux_loss, comp)

    @torch.no_grad()
    def answer(self, memory: list, question_ids, question_mask, max_new_tokens: int = 16,
               eos_token_id: int | None = None) -> list:
        """Greedy answers (token id lists, without the eos) from each sample's memory and question."""
        seqs = [torch.cat([mem, self.decoder_embed(_valid(question_ids[b], question_mask[b]))])
                for b, mem in enumerate(memory)]
        x, mask = _left_pad(seqs)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = _cache_kwargs(self.decoder)
        out = self.decoder(inputs_embeds=x, attention_mask=mask.long(), position_ids=positions, use_cache=True,
                           logits_to_keep=1, **cache)
        attn = mask.long()
        done = torch.zeros(len(seqs), dtype=torch.bool, device=self.device)
        steps = []
        next_pos = positions[:, -1:] + 1
        logits = out.logits[:, -1]
        for step in range(max_new_tokens):
            token = logits.argmax(-1)
            steps.append(token)
            if eos_token_id is not None:
                done = done | (token == eos_token_id)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = self.decoder(input_ids=token[:, None], attention_mask=attn, position_ids=next_pos,
                               use_cache=True, **cache)
            logits, next_pos = out.logits[:, -1], next_pos + 1
        answers = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in seqs]
        if eos_token_id is not None:  # each answer ends before its first eos
            answers = [row[:row.index(eos_token_id)] if eos_token_id in row else row for row in answers]
        return answers

    @torch.no_grad()
    def generate(self, context_ids, context_mask, question_ids, question_mask, max_new_tokens: int = 16,
                 ratio: float | None = None, keep_fraction: float | None = None, eos_token_id: int | None = None,
                 **_) -> tuple[list, Compressed]:
        comp = self.compress(context_ids, context_mask, question_ids, question_mask, None, ratio, keep_fraction)
        return self.answer(comp.memory, question_ids, question_mask, max_new_tokens, eos_token_id), comp


def _cache_kwargs(decoder) -> dict:
    """A fresh KV cache, under the keyword this transformers version takes (`cache`, formerly
    `past_key_values`); the decoder fills it in place."""
    from transformers import DynamicCache

    from framework.models.hf_compat import cache_keyword

    return {cache_keyword(decoder): DynamicCache(config=decoder.config)}


def _right_pad(seqs: list) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(s.shape[0]) for s in seqs)
    x = seqs[0].new_zeros((len(seqs), width, seqs[0].shape[-1]))
    mask = torch.zeros((len(seqs), width), dtype=torch.bool, device=x.device)
    for i, s in enumerate(seqs):
        x[i, :s.shape[0]], mask[i, :s.shape[0]] = s, True
    return x, mask


def _left_pad(seqs: list) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(s.shape[0]) for s in seqs)
    x = seqs[0].new_zeros((len(seqs), width, seqs[0].shape[-1]))
    mask = torch.zeros((len(seqs), width), dtype=torch.bool, device=x.device)
    for i, s in enumerate(seqs):
        x[i, width - s.shape[0]:], mask[i, width - s.shape[0]:] = s, True
    return x, mask
