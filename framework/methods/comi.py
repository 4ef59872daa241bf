"""COMI as a method: the encoder reads [context ; query]; groups of tokens are re-sized by their
marginal information gain (relevance to the query minus redundancy) and merged with MIG weights
into one vector each; COMI's LSA block aligns them for the decoder (methods.md §2).

    python recipes/comi_qa.py --preset tiny --compression.ratio 16 --compression.fine false
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from framework.config import ConfigError
from framework.job import TrainJob
from framework.methods import compression as shared
from framework.methods.registry import MethodSpec


@dataclass
class COMISettings(shared.CompressionSettings):
    """COMI's settings: ratio (tokens per output slot); train_ratios: ratios drawn per batch in
    training (empty: always `ratio`); alpha/beta weigh relevance and redundancy (merge_alpha /
    merge_beta: the fine step's own, when set); coarse, fine and
    redundancy switch the stages (coarse and fine off = GMSA's mean pooling); chunk_tokens: longer
    contexts are compressed in chunks this long."""

    alignment: str = "block"
    decoder: str = "lora"
    decoder_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    ratio: int = 16
    train_ratios: list = field(default_factory=list)
    alpha: float = 1.0
    beta: float = 1.0
    merge_alpha: float | None = None
    merge_beta: float | None = None
    coarse: bool = True
    fine: bool = True
    redundancy: bool = True
    chunk_tokens: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        if any((not isinstance(r, int)) or r < 1 for r in self.train_ratios):
            raise ConfigError(f"compression.train_ratios={self.train_ratios!r} must be whole ratios >= 1. "
                              "Fix: e.g. --compression.train_ratios '[8, 16]'")


@dataclass
class COMIJob(TrainJob):
    METHOD: ClassVar[str] = "comi"

    compression: COMISettings = field(default_factory=COMISettings)


class COMIModule(shared.CompressionQAModule):
    def batch_compression(self, step: int) -> dict:
        if self.settings.train_ratios:
            return {"ratio": self._rng(step).choice(self.settings.train_ratios)}
        return {}


METHOD = MethodSpec(
    name="comi", job=COMIJob, build_model=shared.build_model, load_model=shared.load_model,
    save_model=shared.save_model, validate=shared.validate, recognizes=shared.is_compressor_dir,
    mlflow_model=shared.MLFLOW_MODEL,
    lightning_module=lambda model, cfg, steps: COMIModule(model, cfg.optim, steps, cfg.compression, cfg.launch.seed),
)
