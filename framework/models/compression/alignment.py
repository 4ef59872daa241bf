"""Alignment modules: map compressed encoder states into the decoder's input-embedding space.

- ``linear``: RAM's semantic alignment layer, one Linear; it starts as the identity (encoder and
  decoder come from one backbone, so their spaces start close).
- ``block``: COMI's (and GMSA's) Layer Semantic Alignment, one Transformer block initialised from a
  backbone decoder layer; the compressed slots attend to each other (no causal mask), at positions
  0..G-1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class LinearAlignment(nn.Module):
    def __init__(self, dim: int, dtype=None):
        super().__init__()
        self.proj = nn.Linear(dim, dim, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim, dtype=self.proj.weight.dtype))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(x)


class BlockAlignment(nn.Module):
    """One decoder block (a copy of `layer`) with its own rotary embedding."""

    def __init__(self, layer: nn.Module, rotary: nn.Module):
        super().__init__()
        self.layer = copy.deepcopy(layer)
        self.rotary = copy.deepcopy(rotary)
        if hasattr(self.layer.self_attn, "layer_idx"):
            self.layer.self_attn.layer_idx = 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, slots, _ = x.shape
        positions = torch.arange(slots, device=x.device).unsqueeze(0).expand(batch, slots)
        cos, sin = self.rotary(x, positions)
        additive = None
        if mask is not None:  # [B, 1, G, G]: every slot sees every valid slot
            blocked = ~mask[:, None, None, :].expand(batch, 1, slots, slots)
            additive = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device)
            additive = additive.masked_fill(blocked, torch.finfo(x.dtype).min)
        else:
            additive = torch.zeros((batch, 1, slots, slots), dtype=x.dtype, device=x.device)
        out = self.layer(x, attention_mask=additive, position_ids=positions, position_embeddings=(cos, sin),
                         use_cache=False)
        return out[0] if isinstance(out, tuple) else out


def build_alignment(kind: str, backbone, layer_index: int) -> nn.Module:
    """The alignment module of `kind` for a Hugging Face causal LM `backbone`."""
    dim = backbone.config.hidden_size
    if kind == "linear":
        return LinearAlignment(dim, dtype=backbone.get_input_embeddings().weight.dtype)
    layers = backbone.base_model.layers
    return BlockAlignment(layers[min(layer_index, len(layers) - 1)], backbone.base_model.rotary_emb)
