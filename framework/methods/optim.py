"""AdamW parameter groups and the warmup + cosine learning-rate schedule, shared by every method."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


BACKBONE_MODES = ("full", "frozen", "lora")


class OptimConfigError(ValueError):
    """An optimisation setting breaks a rule; the message names it and the fix."""


@dataclass
class OptimConfig:
    """lr: base learning rate. memory_lr_multiplier: factor for the parameters a method adds
    (CoMeT's memory modules). Weight decay never applies to 1-D parameters (norms, biases, gates).
    The schedule warms up linearly for `warmup_steps`, then decays by a cosine to `min_lr_ratio` x lr.

    backbone: how the base model trains. "full": every parameter; "frozen": only the parameters the method
    adds; "lora": the base weights are frozen and low-rank adapters (rank `lora_rank`, scale
    `lora_alpha` / `lora_rank`) on its linear layers named by `lora_targets` (name suffixes) train.
    backbone_lr: the LR of the backbone's parameters or of its adapters (None: `lr`)."""

    lr: float = 5e-5
    memory_lr_multiplier: float = 5.0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.5
    backbone: str = "full"
    backbone_lr: float | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_MODES:
            raise OptimConfigError(f"method.backbone={self.backbone!r} is not one of {BACKBONE_MODES}. "
                                   "Fix: --method.backbone full (train everything), frozen (only what the method "
                                   "adds) or lora (low-rank adapters on the backbone)")
        targets = [self.lora_targets] if isinstance(self.lora_targets, str) else list(self.lora_targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise OptimConfigError(f"method.lora_targets={self.lora_targets!r} must be a non-empty list of layer "
                                   "names. Fix: e.g. --method.lora_targets '[\"q_proj\", \"v_proj\"]'")
        self.lora_targets = tuple(targets)
        checks = [
            ("lr", self.lr > 0, "use e.g. 5e-5"),
            ("memory_lr_multiplier", self.memory_lr_multiplier > 0, "use the paper's 5"),
            ("weight_decay", self.weight_decay >= 0, "use 0 or e.g. 0.1"),
            ("warmup_steps", self.warmup_steps >= 0, "use e.g. 10"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "use a value in [0, 1]"),
            ("grad_clip", self.grad_clip >= 0, "use e.g. 1.5, or 0 to disable clipping"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "use e.g. [0.9, 0.95]"),
            ("backbone_lr", self.backbone_lr is None or self.backbone_lr > 0, "use e.g. 1e-4, or none for lr"),
            ("lora_rank", self.lora_rank > 0, "use e.g. 8"),
            ("lora_alpha", self.lora_alpha > 0, "use e.g. 16 (the adapters' scale is lora_alpha / lora_rank)"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise OptimConfigError(f"method.{name}={getattr(self, name)!r} is out of range. Fix: {fix}")


def param_groups(model: torch.nn.Module, extra_params, cfg: OptimConfig) -> list[dict]:
    """Groups (base | lora | extra) x (decay | no decay). The backbone's parameters (or its LoRA adapters)
    train at `backbone_lr` (None: lr), the extra ones at lr x memory_lr_multiplier. Frozen parameters
    are left out."""
    from framework.models.lora import is_lora_name

    extra = {id(p) for p in extra_params}
    base_lr = cfg.lr if cfg.backbone_lr is None else cfg.backbone_lr
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_extra, decay = id(p) in extra, p.ndim >= 2
        lora = not is_extra and is_lora_name(name)
        key = (is_extra, decay, lora)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": cfg.lr * cfg.memory_lr_multiplier if is_extra else base_lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": ("memory" if is_extra else "lora" if lora else "base") + ("" if decay else "_no_decay"),
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The LR factor at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_scheduler(opt, cfg: OptimConfig, total_steps: int):
    """The warmup + cosine LambdaLR every method steps once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio))


def build_optimizer(model, extra_params, cfg: OptimConfig, total_steps: int):
    opt = torch.optim.AdamW(param_groups(model, extra_params, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    return opt, lr_scheduler(opt, cfg, total_steps)
