"""The context autoencoder of the "Data Distribution Matters" study (methods.md §4): a trainable
encoder LM compresses a text into k slots, a linear projection maps them into a frozen decoder LM's
input-embedding space, and the decoder reproduces the text from them. Compression quality is
reconstruction fidelity (token F1, BLEU, ROUGE-L); the per-sample entropy of the text measured by
each model is what the study correlates with it.

    ae = ContextAutoencoder(encoder_lm, decoder_lm, slots=8, slot_mode="memory_tokens")
    out = ae(input_ids, attention_mask)           # out.loss (mean), out.loss_sum, out.num_tokens, out.slots
    out.loss.backward()                           # optimiser over ae.trainable_parameters()
    ae.reconstruct(input_ids, attention_mask)     # greedy token ids per row, cached decoding
    ae.reconstruction_scores(input_ids, attention_mask)   # [{"f1", "bleu", "rouge_l"}, ...]
    ae.entropies(input_ids, attention_mask)       # {"encoder": Tensor[B], "decoder": Tensor[B]}
    ae.save_pretrained("ae"); ContextAutoencoder.from_pretrained("ae")

Both models are Hugging Face causal LMs of any decoder-only family (Llama, Mistral, Qwen2, Qwen3);
they may differ in hidden size and in vocabulary size but must read the same token ids (one shared
tokenizer): every text id must be below both vocabulary sizes.

How the k slots are made (``slot_mode``; the sources leave this open, both are offered):

- ``"memory_tokens"`` (ICAE): k learned embeddings are placed right after each row's last real
  token, so a right-padded row reads ``[text ; m_1..m_k ; padding]``; the encoder's last hidden
  states at the k memory positions are the slots. Every row's memory tokens follow its own text at
  positions n..n+k-1, so padding changes nothing.
- ``"group_pool"`` (GMSA): the encoder's last hidden states of a row's n real tokens are cut into k
  contiguous groups and each group is mean-pooled. Sizes are as equal as possible, the first
  n mod k groups one token longer (``torch.tensor_split`` order). A row needs at least k real tokens.

The decoder reads ``[projected slots ; marker ; text]``. The marker is a learned vector in the
decoder's embedding space (not a token id: the decoder is frozen, so a learned marker is the one
place besides the slots where training can say "now reconstruct"). The loss is next-token cross
entropy on the text tokens only: text token t is predicted from the slots, the marker and text < t.

Padding: ``attention_mask`` marks the real tokens (1) of each row; they are re-packed to the left in
their order, so right and left padding give the same results. Everything is built right-padded.

A saved directory holds ``encoder/`` and ``decoder/`` (plain Hugging Face checkpoints, loadable with
``AutoModelForCausalLM.from_pretrained``), ``autoencoder.safetensors`` (projection, memory-token
and marker embeddings) and ``autoencoder_config.json`` (slots, slot_mode, format version).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from framework.metrics.text_metrics import bleu, rouge_l, token_f1
from framework.models.compression.entropy import batch_mask, token_nll

SLOT_MODES = ("memory_tokens", "group_pool")
AUTOENCODER_CONFIG = "autoencoder_config.json"
AUTOENCODER_WEIGHTS = "autoencoder.safetensors"
ENCODER_DIR, DECODER_DIR = "encoder", "decoder"
FORMAT_VERSION = 1


class AutoencoderError(ValueError):
    """The autoencoder cannot be built, fed or loaded; the message says why and how to fix it."""


@dataclass
class AutoencoderOutput:
    """loss: mean cross entropy per text token (what to backpropagate); loss_sum / num_tokens: the
    summed cross entropy and the number of text tokens, to average over several batches; slots:
    [B, k, d_dec] the projected slots the decoder read."""

    loss: torch.Tensor
    loss_sum: torch.Tensor
    num_tokens: torch.Tensor
    slots: torch.Tensor


def _vocab_size(lm) -> int:
    """Ids the model can both embed and predict."""
    sizes = [lm.get_input_embeddings().num_embeddings]
    head = lm.get_output_embeddings()
    if head is not None and getattr(head, "out_features", None):
        sizes.append(int(head.out_features))
    return min(sizes)


def _embedding_std(lm) -> float:
    w = lm.get_input_embeddings().weight.detach().float()
    return float(w.std()) or 0.02


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Real tokens moved to the left of each row, order kept: (ids [B, L], mask [B, L] bool,
    lengths [B]) with L the longest row; padding ids become 0."""
    mask = batch_mask(input_ids, attention_mask, AutoencoderError)
    mask = mask.to(input_ids.device)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    lengths = mask.sum(dim=1)
    width = int(lengths.max()) if lengths.numel() else 0
    ids = input_ids.gather(1, order)[:, :width]
    packed = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]
    return ids.masked_fill(~packed, 0), packed, lengths


def group_ids(lengths: torch.Tensor, width: int, k: int) -> torch.Tensor:
    """[B, width] group of each token position for k contiguous, as-equal-as-possible groups of each
    row's first lengths[b] tokens (the first n mod k groups get one extra token); padding -> k."""
    t = torch.arange(width, device=lengths.device)[None, :]
    n = lengths[:, None]
    q, r = torch.div(n, k, rounding_mode="floor"), n % k
    long_part = r * (q + 1)  # tokens held by the r longer groups
    g = torch.where(t < long_part, torch.div(t, q + 1, rounding_mode="floor"),
                    r + torch.div(t - long_part, q.clamp(min=1), rounding_mode="floor"))
    return torch.where(t < n, g, torch.full_like(g, k))


def truncated_lm(lm, layers: int):
    """A new causal LM holding a copy of `lm`'s first `layers` layers (embeddings, final norm and
    head included): an encoder made from a bigger model, as the RAM/COMI skeleton makes its own."""
    from transformers import AutoModelForCausalLM

    from framework.models.compression.skeleton import encoder_config

    small = AutoModelForCausalLM.from_config(encoder_config(lm.config, layers))
    state = lm.state_dict()
    small.load_state_dict({k: v for k, v in state.items() if k in small.state_dict()}, strict=False)
    return small.to(dtype=lm.dtype, device=lm.device)


class ContextAutoencoder(nn.Module):
    """encoder_lm (trainable) -> k slots -> Linear(d_enc, d_dec) -> decoder_lm (frozen) -> the text.

    slots: k >= 1 slots per text. slot_mode: "memory_tokens" or "group_pool" (module docstring).
    text_vocab_size: optionally the shared tokenizer's size (``len(tokenizer)``), checked against
    both models at once; the ids of every batch are checked in any case."""

    def __init__(self, encoder_lm: nn.Module, decoder_lm: nn.Module, slots: int = 128,
                 slot_mode: str = "memory_tokens", text_vocab_size: int | None = None):
        super().__init__()
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise AutoencoderError(f"slots={slots!r}; the autoencoder needs a whole number k >= 1 of slots. "
                                   "Fix: e.g. slots=128 (the study's k, for 512-token texts)")
        if slot_mode not in SLOT_MODES:
            raise AutoencoderError(f"slot_mode={slot_mode!r} is unknown. Fix: one of {', '.join(SLOT_MODES)}")
        if encoder_lm is decoder_lm:
            raise AutoencoderError("encoder_lm and decoder_lm are the same module, so freezing the decoder would "
                                   "freeze the encoder. Fix: pass a copy as the encoder (copy.deepcopy(lm))")
        self.slots, self.slot_mode = slots, slot_mode
        self.encoder, self.decoder = encoder_lm, decoder_lm
        self.encoder_vocab, self.decoder_vocab = _vocab_size(encoder_lm), _vocab_size(decoder_lm)
        if text_vocab_size is not None and text_vocab_size > min(self.encoder_vocab, self.decoder_vocab):
            raise AutoencoderError(self._vocab_message(f"the tokenizer has {text_vocab_size} ids"))
        self.decoder.requires_grad_(False)
        self.decoder.eval()
        d_enc = encoder_lm.get_input_embeddings().embedding_dim
        d_dec = decoder_lm.get_input_embeddings().embedding_dim
        enc_like = dict(dtype=encoder_lm.dtype, device=encoder_lm.device)
        self.projection = nn.Linear(d_enc, d_dec).to(**enc_like)
        # learned vectors start at the scale of the models' own token embeddings
        self.memory = None
        if slot_mode == "memory_tokens":
            self.memory = nn.Parameter(torch.randn(slots, d_enc, **enc_like) * _embedding_std(encoder_lm))
        self.marker = nn.Parameter(torch.randn(d_dec, dtype=decoder_lm.dtype, device=decoder_lm.device)
                                   * _embedding_std(decoder_lm))

    def _vocab_message(self, what: str) -> str:
        return (f"{what}, but the encoder's vocabulary holds {self.encoder_vocab} ids and the decoder's "
                f"{self.decoder_vocab}; the text ids must be below both. Fix: tokenize with the tokenizer both "
                "models share, or resize the smaller model (model.resize_token_embeddings(len(tokenizer)))")

    # ------------------------------------------------------------------ parts
    def train(self, mode: bool = True) -> "ContextAutoencoder":
        """Train mode for the encoder; the frozen decoder always stays in eval mode."""
        super().train(mode)
        self.decoder.eval()
        return self

    def trainable_parameters(self) -> list:
        """What the optimiser updates: the encoder, the projection, the memory tokens and the marker."""
        params = list(self.encoder.parameters()) + list(self.projection.parameters()) + [self.marker]
        return params + ([self.memory] if self.memory is not None else [])

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def _pack(self, input_ids, attention_mask):
        ids, mask, lengths = pack_rows(input_ids, attention_mask)
        self._check_ids(ids[mask])
        if self.slot_mode == "group_pool" and bool((lengths < self.slots).any()):
            bad = (lengths < self.slots).nonzero().flatten().tolist()
            raise AutoencoderError(f"rows {bad} have fewer real tokens ({lengths[bad].tolist()}) than the "
                                   f"{self.slots} slots, so group_pool has empty groups. Fix: longer texts, "
                                   "fewer slots, or slot_mode='memory_tokens'")
        return ids, mask, lengths

    def _check_ids(self, real: torch.Tensor) -> None:
        if real.numel():
            low, high = int(real.min()), int(real.max())
            if low < 0 or high >= min(self.encoder_vocab, self.decoder_vocab):
                raise AutoencoderError(self._vocab_message(f"input_ids hold the token id {high if low >= 0 else low}"))

    # ------------------------------------------------------------------ compression
    def slot_states(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The k slots in the encoder's space, before the projection: [B, k, d_enc]."""
        return self._slot_states(*self._pack(input_ids.to(self.encoder.device), attention_mask))

    def _slot_states(self, ids, mask, lengths) -> torch.Tensor:
        k, device = self.slots, self.encoder.device
        ids, mask, lengths = ids.to(device), mask.to(device), lengths.to(device)
        embed = self.encoder.get_input_embeddings()
        if self.slot_mode == "memory_tokens":
            width = ids.shape[1] + k
            t = torch.arange(width, device=device)[None, :]
            slot_of = t - lengths[:, None]                          # memory index at each position
            is_memory = (slot_of >= 0) & (slot_of < k)
            text = embed(F.pad(ids, (0, k)))
            x = torch.where(is_memory[..., None], self.memory[slot_of.clamp(0, k - 1)], text)
            hidden = self.encoder.base_model(inputs_embeds=x, attention_mask=(slot_of < k).long()).last_hidden_state
            where = lengths[:, None] + torch.arange(k, device=device)[None, :]
            return hidden.gather(1, where[..., None].expand(-1, -1, hidden.shape[-1]))
        hidden = self.encoder.base_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        groups = group_ids(lengths, ids.shape[1], k)
        sums = hidden.new_zeros(hidden.shape[0], k + 1, hidden.shape[-1]).scatter_add(
            1, groups[..., None].expand(-1, -1, hidden.shape[-1]), hidden)[:, :k]
        sizes = F.one_hot(groups, k + 1)[..., :k].sum(dim=1)        # [B, k]
        return sums / sizes[..., None].to(sums.dtype)

    def compress(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The projected slots in the decoder's input-embedding space: [B, k, d_dec]."""
        return self._compress(*self._pack(input_ids.to(self.encoder.device), attention_mask))

    def _compress(self, ids, mask, lengths) -> torch.Tensor:
        slots = self.projection(self._slot_states(ids, mask, lengths))
        return slots.to(dtype=self.decoder.dtype, device=self.decoder.device)

    def _prefix(self, slots: torch.Tensor) -> torch.Tensor:
        """[slots ; marker]: [B, k + 1, d_dec]."""
        return torch.cat([slots, self.marker.expand(slots.shape[0], 1, -1).to(slots.dtype)], dim=1)

    # ------------------------------------------------------------------ training
    def forward(self, input_ids, attention_mask=None) -> AutoencoderOutput:
        ids, mask, lengths = self._pack(input_ids.to(self.encoder.device), attention_mask)
        slots = self._compress(ids, mask, lengths)
        device, k = self.decoder.device, self.slots
        ids, mask = ids.to(device), mask.to(device)
        x = torch.cat([self._prefix(slots), self.decoder.get_input_embeddings()(ids)], dim=1)
        attn = torch.cat([torch.ones_like(mask[:, :k + 1]), mask], dim=1).long()
        hidden = self.decoder.base_model(inputs_embeds=x, attention_mask=attn).last_hidden_state
        # position k (the marker) predicts text token 0, position k + t predicts token t + 1
        rows = hidden[:, k:k + ids.shape[1]][mask]
        logits = self.decoder.get_output_embeddings()(rows).float()
        loss_sum = F.cross_entropy(logits, ids[mask], reduction="sum")
        count = mask.sum()
        return AutoencoderOutput(loss_sum / count.clamp(min=1), loss_sum, count, slots)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def reconstruct(self, input_ids, attention_mask=None, max_new_tokens: int | None = None,
                    eos_token_id: int | None = None) -> list:
        """Greedy reconstructions (token id lists) from each row's slots and the marker, with the
        decoder's KV cache. max_new_tokens: None = each row's own number of real tokens; an int =
        that many tokens for every row. eos_token_id: cut each row before its first eos."""
        ids, mask, lengths = self._pack(input_ids.to(self.encoder.device), attention_mask)
        budgets = lengths.tolist() if max_new_tokens is None else [int(max_new_tokens)] * len(lengths)
        steps_needed = max(budgets, default=0)
        if steps_needed <= 0:
            return [[] for _ in budgets]
        from framework.models.compression.skeleton import _cache_kwargs

        prefix = self._prefix(self._compress(ids, mask, lengths))  # same length for every row: no padding
        cache = _cache_kwargs(self.decoder)
        out = self.decoder(inputs_embeds=prefix, use_cache=True, logits_to_keep=1, **cache)
        steps = []
        for step in range(steps_needed):
            token = out.logits[:, -1].argmax(-1)
            steps.append(token)
            if step == steps_needed - 1:
                break
            out = self.decoder(input_ids=token[:, None], use_cache=True, **cache)
        rows = torch.stack(steps, dim=1).tolist()
        rows = [row[:n] for row, n in zip(rows, budgets)]
        if eos_token_id is not None:
            rows = [row[:row.index(eos_token_id)] if eos_token_id in row else row for row in rows]
        return rows

    def reconstruction_scores(self, input_ids, attention_mask=None) -> list:
        """Per row: {"f1", "bleu", "rouge_l"} of the greedy reconstruction against the row's real tokens."""
        ids, mask, _ = pack_rows(input_ids, attention_mask)
        refs = [row[m].tolist() for row, m in zip(ids, mask)]
        preds = self.reconstruct(input_ids, attention_mask)
        return [{"f1": token_f1(p, r), "bleu": bleu(p, r), "rouge_l": rouge_l(p, r)} for p, r in zip(preds, refs)]

    def entropies(self, input_ids, attention_mask=None) -> dict:
        """Per-sample mean token NLL (nats) of the text under the encoder's LM head and the decoder's:
        {"encoder": Tensor[B], "decoder": Tensor[B]} (``token_nll``; rows need 2+ real tokens)."""
        ids, mask, _ = pack_rows(input_ids, attention_mask)
        self._check_ids(ids[mask])
        return {"encoder": token_nll(self.encoder, input_ids, attention_mask),
                "decoder": token_nll(self.decoder, input_ids, attention_mask)}

    # ------------------------------------------------------------------ saving, loading
    def _own_state(self) -> dict:
        state = {f"projection.{k}": v for k, v in self.projection.state_dict().items()}
        state["marker"] = self.marker
        if self.memory is not None:
            state["memory"] = self.memory
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save_pretrained(self, directory, tokenizer=None) -> None:
        """``directory/encoder`` and ``directory/decoder`` as Hugging Face checkpoints, plus the
        projection and learned vectors (safetensors) and the slot settings (JSON). A tokenizer, when
        given, is saved into both subfolders so each loads on its own."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        for name, lm in ((ENCODER_DIR, self.encoder), (DECODER_DIR, self.decoder)):
            lm.save_pretrained(os.path.join(directory, name), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(os.path.join(directory, name))
        save_file(self._own_state(), os.path.join(directory, AUTOENCODER_WEIGHTS), metadata={"format": "pt"})
        meta = {"format_version": FORMAT_VERSION, "slots": self.slots, "slot_mode": self.slot_mode,
                "encoder": ENCODER_DIR, "decoder": DECODER_DIR}
        with open(os.path.join(directory, AUTOENCODER_CONFIG), "w") as fh:
            json.dump(meta, fh, indent=2)

    @classmethod
    def from_pretrained(cls, directory, **load_kwargs) -> "ContextAutoencoder":
        """Load what :meth:`save_pretrained` wrote (in eval mode); load_kwargs go to both
        ``AutoModelForCausalLM.from_pretrained`` calls (e.g. dtype, device_map)."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        directory = os.fspath(directory)
        cfg_path, w_path = os.path.join(directory, AUTOENCODER_CONFIG), os.path.join(directory, AUTOENCODER_WEIGHTS)
        if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
            raise AutoencoderError(f"{directory} is not an autoencoder checkpoint: {AUTOENCODER_CONFIG} or "
                                   f"{AUTOENCODER_WEIGHTS} is missing. Fix: use a directory written by "
                                   "ContextAutoencoder.save_pretrained")
        with open(cfg_path) as fh:
            meta = json.load(fh)
        if meta.get("format_version") != FORMAT_VERSION:
            raise AutoencoderError(f"{cfg_path} has format_version {meta.get('format_version')}; this code reads "
                                   f"{FORMAT_VERSION}. Fix: load it with the code version that wrote it")
        encoder = AutoModelForCausalLM.from_pretrained(os.path.join(directory, meta["encoder"]), **load_kwargs)
        decoder = AutoModelForCausalLM.from_pretrained(os.path.join(directory, meta["decoder"]), **load_kwargs)
        model = cls(encoder, decoder, slots=int(meta["slots"]), slot_mode=meta["slot_mode"])
        state, own = load_file(w_path), model._own_state()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise AutoencoderError(f"{w_path} does not match {cfg_path}: tensors "
                                   f"{sorted((k, tuple(v.shape)) for k, v in state.items())}, expected "
                                   f"{sorted((k, tuple(v.shape)) for k, v in own.items())}. Fix: keep the files "
                                   "of one save_pretrained call together")
        with torch.no_grad():
            model.projection.load_state_dict({k[len("projection."):]: v for k, v in state.items()
                                              if k.startswith("projection.")})
            model.marker.copy_(state["marker"])
            if model.memory is not None:
                model.memory.copy_(state["memory"])
        return model.eval()
