"""AdamW parameter groups and the warmup + cosine learning-rate schedule, shared by every method.

Their settings, the job's `optim` section (OptimConfig), live in `framework.job.optim`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from framework.job.optim import BACKBONE_MODES, OptimConfig, OptimConfigError  # noqa: F401  (the section's home)


def param_groups(model: torch.nn.Module | None, extra_params, cfg: OptimConfig,
                 named: dict | None = None) -> list[dict]:
    """Groups (base | lora | extra) x (decay | no decay). The backbone's parameters (or its LoRA adapters)
    train at `backbone_lr` (None: lr), the extra ones at lr x memory_lr_multiplier. Frozen parameters
    are left out. Weight decay applies to matrices only (ndim >= 2).

    named: {group name: [parameters]} (e.g. the compression methods' encoder / alignment / decoder sets)
    instead of the split above: groups <name> and <name>_no_decay in that order, all at lr; `model` and
    `extra_params` are then not read."""
    if named is not None:
        groups = []
        for name, params in named.items():
            for decay in (True, False):
                chosen = [p for p in params if p.requires_grad and (p.ndim >= 2) == decay]
                if chosen:
                    groups.append({"params": chosen, "lr": cfg.lr, "name": name + ("" if decay else "_no_decay"),
                                   "weight_decay": cfg.weight_decay if decay else 0.0})
        return groups
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


def warmup_cosine(step: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The LR factor at optimizer step `step` (0-based; fractional after a change of global batch)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class SampleSchedule:
    """The LR schedule counted in samples, so that a resume on another global batch (other world size or
    accumulation) keeps it. plan_steps x plan_batch samples is the run's plan; warmup_steps count steps of
    plan_batch samples. This attempt's optimizer step `start_step` had consumed `start_samples`, and each
    of its steps takes `step_batch` samples."""

    plan_steps: int
    plan_batch: int
    start_step: int = 0
    start_samples: int = 0
    step_batch: int | None = None

    def position(self, step: int) -> float:
        """Optimizer step `step` of this attempt as a step of the plan (== step if the batch never changed)."""
        samples = self.start_samples + (step - self.start_step) * (self.step_batch or self.plan_batch)
        return samples / self.plan_batch


def lr_scheduler(opt, cfg: OptimConfig, total_steps: "int | SampleSchedule"):
    """The warmup + cosine LambdaLR every method steps once per optimizer step. total_steps: the plan's
    optimizer steps, or a SampleSchedule when the run resumed on another global batch."""
    if isinstance(total_steps, SampleSchedule):
        plan = total_steps
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(plan.position(s), cfg.warmup_steps, plan.plan_steps, cfg.min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio))


def build_optimizer(model, extra_params, cfg: OptimConfig, total_steps: "int | SampleSchedule"):
    opt = torch.optim.AdamW(param_groups(model, extra_params, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    return opt, lr_scheduler(opt, cfg, total_steps)
