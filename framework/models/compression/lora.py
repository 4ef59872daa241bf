"""Low-rank adapters (LoRA) on named Linear layers of a Hugging Face model, in plain torch.

    add_lora(decoder, ["q_proj", "v_proj"], rank=8, alpha=32)   # W x + (alpha/r) B A x, B starts at 0
    merged_state_dict(decoder)                                  # the plain model's state dict, adapters folded in

The saved decoder is always a plain Hugging Face model (adapters merged), so any loader reads it;
loading it for more training adds fresh adapters (B = 0), which starts from the same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen-or-not base Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:  # some HF code reads proj.weight (dtype, device)
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + (self.lora_b @ self.lora_a) * self.scale


def add_lora(model: nn.Module, targets, rank: int, alpha: float) -> list[str]:
    """Wrap every Linear whose attribute name is in `targets`; returns the wrapped module names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]


def merged_state_dict(model: nn.Module) -> dict:
    """The state dict the model would have without adapters, with each adapter folded into its weight."""
    state = {}
    lora_prefixes = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    for key, value in model.state_dict().items():
        owner = next((p for p in lora_prefixes if key.startswith(p + ".")), None)
        if owner is None:
            state[key] = value
            continue
        rest = key[len(owner) + 1:]
        if rest == "base.weight":
            state[f"{owner}.weight"] = lora_prefixes[owner].merged_weight().detach()
        elif rest.startswith("base."):
            state[f"{owner}.{rest[len('base.'):]}"] = value
    return state
