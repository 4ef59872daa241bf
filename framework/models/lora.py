"""Low-rank adapters (LoRA) on the linear layers of any torch model, without touching its classes or code.

    names = add_lora(model.backbone, ["q_proj", "v_proj"], rank=8, alpha=16.0, exclude=added_params)
    plain_state_dict(model.backbone)   # the original keys, each adapter folded into its weight

Each chosen `nn.Linear` keeps its class, its forward and its parameter names (`...q_proj.weight`); it gains
two parameters, `lora_A` (rank x in, random) and `lora_B` (out x rank, zero), and a forward hook that adds
`(alpha / rank) * B A x` to its output. So the model computes `(W + (alpha / rank) B A) x` and starts as
exactly the model it was. The update is applied to the activations, never to a materialised copy of W,
so a layer called once per chunk (CoMeT) costs no extra weight-sized memory per call.

`plain_state_dict` gives the state dict of the plain model (adapters merged, no `lora_` keys), which a
Hugging Face `save_pretrained(..., state_dict=...)` writes as an ordinary checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LORA_A, LORA_B = "lora_A", "lora_B"


class LoRAError(ValueError):
    """LoRA cannot be applied as asked; the message says what the model has instead."""


def _lora_hook(module: nn.Linear, args, kwargs, output):
    x = args[0] if args else kwargs["input"]
    a, b = module.lora_A, module.lora_B
    if not torch.is_autocast_enabled(x.device.type):  # under autocast F.linear picks the dtype
        x = x.to(a.dtype)
    update = F.linear(F.linear(x, a), b)
    return output + (update * module.lora_scale).to(output.dtype)


def is_lora_name(name: str) -> bool:
    """Whether a (qualified) parameter name is an adapter's."""
    return name.rsplit(".", 1)[-1] in (LORA_A, LORA_B)


def lora_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """{qualified name: linear layer} of every layer that carries an adapter."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, LORA_A)}


def has_lora(model: nn.Module) -> bool:
    return bool(lora_modules(model))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's linear layers (e.g. q_proj, up_proj, lm_head)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name})


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def add_lora(model: nn.Module, targets, rank: int, alpha: float, exclude=(), seed: int = 0) -> list[str]:
    """Give an adapter to every `nn.Linear` of `model` whose qualified name ends with one of `targets`
    (a whole name part: "q_proj" matches "layers.0.self_attn.q_proj"), except layers holding a parameter
    of `exclude` (or being a module of it). The adapters' A are drawn from a generator seeded with `seed`
    in module order, so every rank and every rebuild creates the same ones without touching the global RNG.
    Returns the names of the adapted layers. Raises LoRAError when a target matches no linear layer, or
    when a matched layer's weight is shared with another module (tied embeddings)."""
    if rank < 1 or alpha <= 0:
        raise LoRAError(f"LoRA needs rank >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise LoRAError("no LoRA targets given; name the linear layers to adapt, e.g. ['q_proj', 'v_proj']")
    skip_params = {id(p) for p in exclude if isinstance(p, torch.Tensor)}
    skip_modules = {id(sub) for m in exclude if isinstance(m, nn.Module) for sub in m.modules()}
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{name}.{pname}" if name else pname)
    chosen, hits = [], {t: 0 for t in targets}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not name:
            continue
        found = [t for t in targets if _matches(name, t)]
        if not found:
            continue
        if id(module) in skip_modules or any(id(p) in skip_params for p in module.parameters(recurse=False)):
            continue
        for t in found:
            hits[t] += 1
        if hasattr(module, LORA_A):
            raise LoRAError(f"{name} already has a LoRA adapter")
        shared = [o for o in owners.get(id(module.weight), []) if o != f"{name}.weight"]
        if shared:
            raise LoRAError(f"{name}.weight is shared with {shared[:3]} (tied weights); an adapter on it would untie "
                            f"them in training but not in the saved model. Drop {found[0]!r} from the targets")
        chosen.append((name, module))
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        raise LoRAError(f"the LoRA target(s) {missing} match no linear layer of {type(model).__name__}; "
                        f"its linear layers are named {linear_names(model)}")
    gen = torch.Generator().manual_seed(seed)
    for _, module in chosen:
        w = module.weight
        a = torch.empty(rank, module.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        module.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        module.lora_B = nn.Parameter(torch.zeros(module.out_features, rank, device=w.device, dtype=w.dtype))
        module.lora_scale = alpha / rank
        module.register_forward_hook(_lora_hook, with_kwargs=True)
    return [name for name, _ in chosen]


def merged_weight(module: nn.Linear) -> torch.Tensor:
    """W + (alpha / rank) B A of an adapted layer, in W's dtype (computed in float32)."""
    w = module.weight
    delta = module.lora_B.detach().float() @ module.lora_A.detach().float()
    return (w.detach().float() + module.lora_scale * delta).to(w.dtype)


def merge_lora_state_dict(state: dict, scale: float) -> dict:
    """A state dict with adapters (`<layer>.lora_A`, `<layer>.lora_B` beside `<layer>.weight`), as the plain
    model's: each weight + scale * B A, no adapter keys. For a state dict alone (e.g. one gathered from
    sharded training), `scale` being alpha / rank of the run."""
    out = {k: v for k, v in state.items() if not is_lora_name(k)}
    for key in state:
        if key.endswith("." + LORA_A):
            prefix = key[: -len(LORA_A) - 1]
            w = state[f"{prefix}.weight"]
            delta = state[f"{prefix}.{LORA_B}"].float() @ state[key].float()
            out[f"{prefix}.weight"] = (w.float() + scale * delta.to(w.device)).to(w.dtype)
    return out


def plain_state_dict(model: nn.Module) -> dict:
    """`model.state_dict()` as the model without adapters: the original keys, adapters merged into the weights.
    Tensors are detached; unadapted ones are the model's own (no copy)."""
    state = {k: v for k, v in model.state_dict().items() if not is_lora_name(k)}
    for name, module in lora_modules(model).items():
        state[f"{name}.weight" if name else "weight"] = merged_weight(module)
    return state


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every adapter into its weight in place and remove it: `model` becomes the plain model."""
    merged = []
    for name, module in lora_modules(model).items():
        with torch.no_grad():
            module.weight.copy_(merged_weight(module))
        keys = [k for k, fn in module._forward_hooks.items() if fn is _lora_hook]
        for key in keys:
            module._forward_hooks.pop(key, None)
            module._forward_hooks_with_kwargs.pop(key, None)
        del module.lora_A, module.lora_B, module.lora_scale
        merged.append(name)
    return merged


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements; a shared (tied) parameter counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
