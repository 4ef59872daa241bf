"""PoC's context-aware performance predictor (methods.md §3): how much of the uncompressed task score
(the *retention*, in [0, 1]) survives compressing this context to each candidate ratio
r = |compressed| / |original|, for all candidates in one forward pass.

    predictor = PoCPredictor.from_causal_lm(lm, num_layers=2)       # embeddings + 2 blocks + norm
    pred = predictor(input_ids, attention_mask, ratios)              # [B, R] in (0, 1)
    loss = predictor.loss(pred, measured_retention)                  # MSE (PPE)
    r = two_stage_search(predictor.retention_fn(ids[:1]), floor=0.9) # framework.metrics.poc_metrics

The trunk reads ``context ⊕ r_1 ⊕ [P] ⊕ r_2 ⊕ [P] ⊕ ...``: after the context's real tokens come, for
each candidate ratio, a ratio token (a learned embedding of the ratio's bin among ``ratio_bins``
equal bins over (0, 1]) and the prediction slot [P] (one learned embedding). These are new
parameters fed as ``inputs_embeds``; the vocabulary is untouched. A linear layer + sigmoid on the
trunk's last hidden state at each [P] gives that ratio's retention.

Padding: the context may be padded on either side (or anywhere); each row's real tokens are packed
to the front, so the ratio/slot tokens sit right after that row's last real token and positions
count the real tokens only.

Attention between the (r_j, [P]) pairs, ``pair_attention``:

- ``"isolated"`` (default): each pair sees the context and itself only, and every pair takes the
  positions right after the context (n, n+1). A prediction is then a function of (context, r_j)
  alone: one forward over R ratios equals R forwards over one ratio each, and a search may query
  ratios other than those trained on without a shift in what the slots see.
- ``"causal"``: plain causal attention over the whole sequence, positions continuing through the
  pairs (the literal reading of the sources): pair j also sees pairs 1..j-1, so its prediction
  depends on the earlier candidates (not on later ones).

A saved directory holds ``config.json`` (the trunk's Hugging Face config), ``poc_predictor.json``
(the predictor's own fields) and ``poc_predictor.safetensors`` (all weights).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from framework.models.compression.skeleton import encoder_config

PREDICTOR_CONFIG = "poc_predictor.json"
PREDICTOR_WEIGHTS = "poc_predictor.safetensors"
FORMAT_VERSION = 1
PAIR_ATTENTION = ("isolated", "causal")


class PoCPredictorError(ValueError):
    """A predictor cannot be built, run or loaded; the message says why and how to fix it."""


def ratio_bin(ratios: torch.Tensor, bins: int) -> torch.Tensor:
    """The bin of each ratio: bin i (0-based) holds (i / bins, (i + 1) / bins], so 1.0 is in bin bins-1.
    A ratio less than a relative 1e-6 above a bin edge counts as on the edge, so k / bins computed in
    floating point (float32 0.1 is 0.10000000149) lands in the bin it ends."""
    x = ratios.double() * bins
    return (torch.ceil(x - 1e-6 * x.clamp(min=1.0)).long() - 1).clamp(0, bins - 1)


class PoCPredictor(nn.Module):
    """Retention predictions for candidate ratios, from a Hugging Face decoder trunk (a base model
    such as ``AutoModel.from_config(cfg)`` or ``lm.model``, taking ``inputs_embeds``)."""

    def __init__(self, trunk: nn.Module, ratio_bins: int = 100, pair_attention: str = "isolated"):
        super().__init__()
        if ratio_bins < 1:
            raise PoCPredictorError(f"ratio_bins={ratio_bins}; at least one bin is needed. Fix: ratio_bins=100")
        if pair_attention not in PAIR_ATTENTION:
            raise PoCPredictorError(f"pair_attention={pair_attention!r} is not one of {PAIR_ATTENTION}. "
                                    "Fix: pair_attention='isolated'")
        impl = getattr(trunk.config, "_attn_implementation", None) or "eager"
        if "flash" in str(impl):
            raise PoCPredictorError(f"the trunk uses attn_implementation={impl!r}, which takes no custom attention "
                                    "mask. Fix: load the trunk with attn_implementation='sdpa' (or 'eager')")
        self.trunk = trunk
        self.ratio_bins, self.pair_attention = int(ratio_bins), pair_attention
        embed = trunk.get_input_embeddings()
        d = embed.weight.shape[1]
        # new embeddings start at the scale of the trunk's own token embeddings
        std = float(embed.weight.detach().float().std()) or 0.02
        kw = dict(dtype=embed.weight.dtype, device=embed.weight.device)
        self.ratio_embed = nn.Embedding(self.ratio_bins, d, **kw)
        self.slot_embed = nn.Parameter(torch.empty(d, **kw))
        self.head = nn.Linear(d, 1, **kw)
        with torch.no_grad():
            self.ratio_embed.weight.normal_(0.0, std)
            self.slot_embed.normal_(0.0, std)
            self.head.weight.normal_(0.0, 0.02)
            self.head.bias.zero_()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_causal_lm(cls, lm: nn.Module, num_layers: int = 2, **kwargs) -> "PoCPredictor":
        """A predictor whose trunk is an own copy of ``lm``'s embeddings, first ``num_layers`` decoder
        layers and final norm (Llama, Mistral, Qwen2, Qwen3 and other ``AutoModel`` families)."""
        from transformers import AutoModel

        total = lm.config.num_hidden_layers
        if not 1 <= num_layers <= total:
            raise PoCPredictorError(f"num_layers={num_layers}, but the LM has {total} layers. "
                                    f"Fix: num_layers between 1 and {total}")
        trunk = AutoModel.from_config(encoder_config(lm.config, num_layers))
        source = lm.base_model.state_dict()
        wanted = trunk.state_dict()
        missing, _ = trunk.load_state_dict({k: v for k, v in source.items() if k in wanted}, strict=False)
        missing = [k for k in missing if not k.endswith("inv_freq")]
        if missing:
            raise PoCPredictorError(f"the LM's base model lacks trunk weights {missing[:4]}. Fix: pass a Hugging "
                                    "Face causal LM of a decoder family (its base_model holds embed_tokens, "
                                    "layers, norm)")
        param = next(lm.parameters())
        return cls(trunk.to(dtype=param.dtype, device=param.device), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.slot_embed.device

    # ------------------------------------------------------------------ forward
    def _ratios(self, ratios, batch: int) -> torch.Tensor:
        r = torch.as_tensor(ratios, dtype=torch.float64).to(self.device)
        if r.dim() == 1:
            r = r.unsqueeze(0).expand(batch, -1)
        if r.dim() != 2 or r.shape[0] != batch or r.shape[1] == 0:
            raise PoCPredictorError(f"ratios has shape {tuple(r.shape)}; expected [R] or [{batch}, R] with R >= 1. "
                                    "Fix: one row of candidate ratios per context, or one row shared by all")
        if bool(((r <= 0) | (r > 1)).any()):
            raise PoCPredictorError(f"ratios must lie in (0, 1] (|compressed| / |original|), got min "
                                    f"{float(r.min()):.4g}, max {float(r.max()):.4g}. Fix: pass ratios, not "
                                    "compression factors (ratio = 1 / factor)")
        return r

    def _layout(self, input_ids, attention_mask, n_pairs):
        """Embeddings [B, L, d], the 4D additive mask [B, 1, L, L], positions [B, L] and the slot
        indices [B, R] of ``context ⊕ (r_j ⊕ [P])_j``, with real context tokens packed to the front."""
        B, T = input_ids.shape
        dev = self.device
        mask = attention_mask.to(dev).bool()
        lengths = mask.sum(dim=1)
        # a stable sort of (padding?) moves each row's real tokens to the front, in order
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        ids = torch.gather(input_ids.to(dev), 1, order)
        L = T + 2 * n_pairs
        t = torch.arange(L, device=dev)
        tok = self.trunk.get_input_embeddings()(ids)
        x = tok.new_zeros((B, L, tok.shape[-1]))
        x[:, :T] = tok * (t[:T][None, :] < lengths[:, None]).unsqueeze(-1).to(tok.dtype)
        rel = t[None, :] - lengths[:, None]                     # offset after the context, [B, L]
        in_ctx = rel < 0
        in_pairs = (rel >= 0) & (rel < 2 * n_pairs)
        real = in_ctx | in_pairs
        pair = torch.where(in_pairs, rel // 2, torch.full_like(rel, -1))
        if self.pair_attention == "isolated":
            positions = torch.where(in_pairs, lengths[:, None] + rel % 2, t[None, :])
            same_pair = (pair[:, :, None] == pair[:, None, :]) & in_pairs[:, :, None]
            visible = in_ctx[:, None, :] | same_pair
        else:
            positions = t[None, :].expand(B, L)
            visible = real[:, None, :].expand(B, L, L)
        allowed = visible & real[:, :, None] & (t[None, :, None] >= t[None, None, :])
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=dev)[None]  # padding rows see themselves
        slots = lengths[:, None] + 2 * torch.arange(n_pairs, device=dev)[None, :] + 1
        return x, allowed, positions.contiguous(), slots, lengths

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                ratios=None) -> torch.Tensor:
        """Predicted retention [B, R] (float32, in (0, 1)) of each context at each ratio.

        input_ids, attention_mask: [B, T] context tokens (mask 1 = real; any padding side).
        ratios: [R] candidates shared by every context, or [B, R] per context, each in (0, 1]."""
        if ratios is None:
            raise PoCPredictorError("no ratios given. Fix: forward(input_ids, attention_mask, ratios=[0.25, 0.5, 1.0])")
        if input_ids.dim() != 2:
            raise PoCPredictorError(f"input_ids has shape {tuple(input_ids.shape)}; expected [batch, tokens]. "
                                    "Fix: add a batch dimension (input_ids[None])")
        B = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        r = self._ratios(ratios, B)
        R = r.shape[1]
        x, allowed, positions, slots, lengths = self._layout(input_ids, attention_mask, R)
        if bool((lengths == 0).any()):
            raise PoCPredictorError("a context has no real tokens. Fix: drop empty contexts (nothing to compress)")
        rows = torch.arange(B, device=self.device)[:, None]
        x[rows, slots - 1] = self.ratio_embed(ratio_bin(r, self.ratio_bins))
        x[rows, slots] = self.slot_embed.expand(B, R, -1)
        additive = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        additive.masked_fill_(~allowed, torch.finfo(x.dtype).min)
        hidden = self.trunk(inputs_embeds=x, attention_mask=additive[:, None], position_ids=positions,
                            use_cache=False).last_hidden_state
        at_slots = hidden[rows, slots]                           # [B, R, d]
        return torch.sigmoid(self.head(at_slots).squeeze(-1).float())

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error between predicted and measured retention (the training form of PPE)."""
        if pred.shape != target.shape:
            raise PoCPredictorError(f"pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}. Fix: "
                                    "measure a retention for every (context, ratio) predicted, in the same order")
        return F.mse_loss(pred, target.to(pred))

    def retention_fn(self, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``predict(ratios[R]) -> retention[R]`` for one context ([T] or [1, T]), without gradients: the
        callable ``framework.metrics.poc_metrics.two_stage_search`` takes (call ``.eval()`` first if the
        trunk has dropout)."""
        ids = input_ids[None] if input_ids.dim() == 1 else input_ids
        mask = None if attention_mask is None else (attention_mask[None] if attention_mask.dim() == 1
                                                    else attention_mask)
        if ids.shape[0] != 1:
            raise PoCPredictorError(f"retention_fn takes one context, got a batch of {ids.shape[0]}. "
                                    "Fix: call it per context (input_ids[i])")

        def predict(ratios: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self(ids, mask, torch.as_tensor(ratios).reshape(-1))[0]

        return predict

    # ------------------------------------------------------------------ saving, loading
    def save_pretrained(self, directory) -> None:
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        self.trunk.config.save_pretrained(directory)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  os.path.join(directory, PREDICTOR_WEIGHTS), metadata={"format": "pt"})
        meta = {"format_version": FORMAT_VERSION, "ratio_bins": self.ratio_bins,
                "pair_attention": self.pair_attention, "trunk_model_type": self.trunk.config.model_type}
        with open(os.path.join(directory, PREDICTOR_CONFIG), "w") as fh:
            json.dump(meta, fh, indent=2)

    @classmethod
    def from_pretrained(cls, directory, **model_kwargs) -> "PoCPredictor":
        """A predictor saved by :meth:`save_pretrained`; ``model_kwargs`` go to ``AutoModel.from_config``
        when the trunk is rebuilt (e.g. ``attn_implementation="eager"``)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        directory = os.fspath(directory)
        paths = [os.path.join(directory, name) for name in (PREDICTOR_CONFIG, PREDICTOR_WEIGHTS, "config.json")]
        absent = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
        if absent:
            raise PoCPredictorError(f"{directory} is not a PoC predictor checkpoint: {absent} missing. "
                                    "Fix: use a directory written by PoCPredictor.save_pretrained")
        with open(paths[0]) as fh:
            meta = json.load(fh)
        if meta.get("format_version") != FORMAT_VERSION:
            raise PoCPredictorError(f"{paths[0]} has format_version {meta.get('format_version')}; this code "
                                    f"reads {FORMAT_VERSION}. Fix: re-save it with this version of the code")
        trunk = AutoModel.from_config(AutoConfig.from_pretrained(directory), **model_kwargs)
        model = cls(trunk, ratio_bins=meta["ratio_bins"], pair_attention=meta["pair_attention"])
        state = load_file(paths[1])
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("inv_freq")]
        if missing or unexpected:
            raise PoCPredictorError(f"{paths[1]} does not match the predictor built from its config: missing "
                                    f"{missing[:4]}, unexpected {unexpected[:4]}. Fix: load the weights with the "
                                    f"{PREDICTOR_CONFIG} and config.json saved beside them")
        return model.to(dtype=next(iter(state.values())).dtype)
