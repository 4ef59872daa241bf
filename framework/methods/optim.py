"""AdamW parameter groups and the warmup + cosine learning-rate schedule, shared by every method."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class OptimConfigError(ValueError):
    """An optimisation setting breaks a rule; the message names it and the fix."""


@dataclass
class OptimConfig:
    """lr: base learning rate. memory_lr_multiplier: factor for the parameters a method adds
    (CoMeT's memory modules). Weight decay never applies to 1-D parameters (norms, biases, gates).
    The schedule warms up linearly for `warmup_steps`, then decays by a cosine to `min_lr_ratio` x lr."""

    lr: float = 5e-5
    memory_lr_multiplier: float = 5.0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.5

    def __post_init__(self) -> None:
        checks = [
            ("lr", self.lr > 0, "use e.g. 5e-5"),
            ("memory_lr_multiplier", self.memory_lr_multiplier > 0, "use the paper's 5"),
            ("weight_decay", self.weight_decay >= 0, "use 0 or e.g. 0.1"),
            ("warmup_steps", self.warmup_steps >= 0, "use e.g. 10"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "use a value in [0, 1]"),
            ("grad_clip", self.grad_clip >= 0, "use e.g. 1.5, or 0 to disable clipping"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "use e.g. [0.9, 0.95]"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise OptimConfigError(f"method.{name}={getattr(self, name)!r} is out of range. Fix: {fix}")


def param_groups(model: torch.nn.Module, extra_params, cfg: OptimConfig) -> list[dict]:
    """Four groups: (base | extra) x (decay | no decay). Frozen parameters are left out."""
    extra = {id(p) for p in extra_params}
    groups = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_extra, decay = id(p) in extra, p.ndim >= 2
        key = (is_extra, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": cfg.lr * (cfg.memory_lr_multiplier if is_extra else 1.0),
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": ("memory" if is_extra else "base") + ("" if decay else "_no_decay"),
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


def build_optimizer(model, extra_params, cfg: OptimConfig, total_steps: int):
    opt = torch.optim.AdamW(param_groups(model, extra_params, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
    return opt, sched
