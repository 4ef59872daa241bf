"""RAM (Read As Human) as a method: segments of the context are encoded in parallel with the
query; the most relevant ones are read closely (their tokens), the rest skimmed (one query-weighted
vector each); a multi-positive contrastive loss teaches relevance (methods.md §1).

    python recipes/ram_qa.py --preset tiny --compression.keep_fraction 0.1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from framework.config import ConfigError
from framework.job import TrainJob
from framework.methods import compression as shared
from framework.methods.registry import MethodSpec

KEEP_SAMPLING = ("fixed", "uniform")


@dataclass
class RAMSettings(shared.CompressionSettings):
    """RAM's settings: segment_size tokens per segment; keep_fraction (rho) of segments read closely;
    keep_sampling: fixed (always rho) or uniform (rho ~ U(0, 1] per batch, so one model serves every
    ratio); tau and contrastive_weight of the contrastive loss."""

    segment_size: int = 50
    keep_fraction: float = 0.125
    keep_sampling: str = "fixed"
    tau: float = 0.05
    contrastive_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep_sampling not in KEEP_SAMPLING:
            raise ConfigError(f"compression.keep_sampling={self.keep_sampling!r} is not one of {KEEP_SAMPLING}. "
                              "Fix: --compression.keep_sampling fixed")


@dataclass
class RAMJob(TrainJob):
    METHOD: ClassVar[str] = "ram"

    compression: RAMSettings = field(default_factory=RAMSettings)


class RAMModule(shared.CompressionQAModule):
    def batch_compression(self, step: int) -> dict:
        if self.settings.keep_sampling == "uniform":
            return {"keep_fraction": 1.0 - self._rng(step).random()}  # (0, 1]
        return {}


METHOD = MethodSpec(
    name="ram", job=RAMJob, build_model=shared.build_model, load_model=shared.load_model,
    save_model=shared.save_model, validate=shared.validate, recognizes=shared.is_ram_dir,
    mlflow_model=shared.MLFLOW_MODEL,
    lightning_module=lambda model, cfg, steps: RAMModule(model, cfg.optim, steps, cfg.compression, cfg.launch.seed),
)
