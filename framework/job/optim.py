"""The `optim` section: learning rates, the warmup + cosine schedule's shape, and how the backbone trains.

The optimiser and schedule built from it are `framework.methods.optim` (param_groups, build_optimizer,
lr_scheduler, warmup_cosine). Before this section was named `optim` it was `method`; old configs still load.
"""

from __future__ import annotations

from dataclasses import dataclass

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
            raise OptimConfigError(f"optim.backbone={self.backbone!r} is not one of {BACKBONE_MODES}. "
                                   "Fix: --optim.backbone full (train everything), frozen (only what the method "
                                   "adds) or lora (low-rank adapters on the backbone)")
        targets = [self.lora_targets] if isinstance(self.lora_targets, str) else list(self.lora_targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise OptimConfigError(f"optim.lora_targets={self.lora_targets!r} must be a non-empty list of layer "
                                   "names. Fix: e.g. --optim.lora_targets '[\"q_proj\", \"v_proj\"]'")
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
                raise OptimConfigError(f"optim.{name}={getattr(self, name)!r} is out of range. Fix: {fix}")
