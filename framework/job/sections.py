"""The sections every method's job shares: `TrainJob` (model, optim, data, launch, tracking) and the
`data` and `launch` sections. Each method's job subclasses TrainJob beside its method
(framework/methods/<method>.py), names the method (`METHOD`, which `framework.methods.registry` maps to
its model and LightningModule) and adds its own section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from framework.config import ConfigError, deprecated
from framework.job.evaluation import EvalConfig
from framework.job.model import BaseModelConfig
from framework.job.optim import OptimConfig
from framework.job.tracking import TrackingConfig, check_run_name

STRATEGIES = ("ddp", "fsdp")
PIPELINE_STRATEGY = "pipeline"  # CoMeT's layer pipeline over chunks (framework/strategies/layer_pipeline.py)


@dataclass
class DataConfig:
    """kind: a data_pipelines source kind (passkey, needle, store_windows, chat). seq_len: tokens per
    sample. batch_size: samples per worker per step. epochs: passes over num_samples when max_steps is
    unset. options: kind-specific keys passed to data_pipelines.build_source."""

    kind: str = "chat"
    seq_len: int = 32768
    batch_size: int = 1
    num_samples: int | None = None
    epochs: int = 3
    seed: int = 0
    loader_workers: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name}={getattr(self, name)!r} must be positive. Fix: e.g. --data.{name} 1")
        if self.loader_workers < 0:
            raise ConfigError(f"data.loader_workers={self.loader_workers} must be >= 0. Fix: --data.loader_workers 0")


@dataclass
class LaunchConfig:
    """num_workers: Ray Train workers (one per GPU with use_gpu). strategy: ddp, fsdp or pipeline (CoMeT's
    layer pipeline). pipeline_size: with the pipeline, workers per pipeline group; the mesh is
    pipeline_size x (num_workers / pipeline_size) data replicas; empty means one pipeline of every worker.
    storage_path: where Ray keeps checkpoints: a local path or a URI (s3://, gs://, ...); empty means
    <cwd>/outputs/ray. run_name: the MLflow run name (and --resume auto's key). accumulate_grad_batches:
    batches per optimizer step (the global batch is data.batch_size x data replicas x this)."""

    num_workers: int = 1
    use_gpu: bool = False
    strategy: str = "ddp"
    pipeline_size: int | None = None
    storage_path: str | None = None
    max_failures: int = 3
    checkpoint_every_n_steps: int = 50
    keep_checkpoints: int = 3
    run_name: str = "comet"
    max_steps: int | None = None
    precision: str = "auto"
    seed: int = 0
    cpus_per_worker: float = 1.0
    accumulate_grad_batches: int = 1

    def __post_init__(self) -> None:
        check_run_name("launch.run_name", self.run_name, "--run-name")
        if self.num_workers < 1:
            raise ConfigError(f"launch.num_workers={self.num_workers} must be >= 1. Fix: --num-workers 2")
        if self.strategy not in STRATEGIES + (PIPELINE_STRATEGY,):
            raise ConfigError(f"launch.strategy={self.strategy!r} is not one of {STRATEGIES} or {PIPELINE_STRATEGY!r}. "
                              "Fix: --launch.strategy ddp")
        if self.pipeline_size is not None and self.strategy != PIPELINE_STRATEGY:
            raise ConfigError(f"launch.pipeline_size={self.pipeline_size} needs launch.strategy=pipeline "
                              f"(it is {self.strategy!r}). Fix: --launch.strategy pipeline, or drop pipeline_size")
        if self.max_failures < -1:
            raise ConfigError(f"launch.max_failures={self.max_failures}: use -1 (retry forever), 0, or a positive count")
        if self.checkpoint_every_n_steps < 1:
            raise ConfigError(f"launch.checkpoint_every_n_steps={self.checkpoint_every_n_steps} must be >= 1")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"launch.keep_checkpoints={self.keep_checkpoints} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"launch.max_steps={self.max_steps} must be a positive number of optimizer steps. "
                              "Fix: --max-steps 100")
        if self.precision not in ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"):
            raise ConfigError(f"launch.precision={self.precision!r}: use auto, 32-true, bf16-mixed or 16-mixed")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"launch.cpus_per_worker={self.cpus_per_worker} must be positive")
        if self.accumulate_grad_batches < 1:
            raise ConfigError(f"launch.accumulate_grad_batches={self.accumulate_grad_batches} must be >= 1. "
                              "Fix: --launch.accumulate_grad_batches 1 (no accumulation)")


@dataclass
class TrainJob:
    """The sections of every method's job. Subclasses set METHOD and add the method's section.
    `optim` was named `method` before; framework.config maps an old `method:` key or --method.<field> to it."""

    METHOD: ClassVar[str] = ""
    RENAMED_FIELDS: ClassVar[dict] = {"method": "optim"}  # old configs' names, mapped by framework.config

    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluations of the registered model, after training

    @property
    def method(self) -> OptimConfig:
        """The old name of `optim`, for old recipes' `cfg.method`."""
        _deprecated_attribute()
        return self.optim

    @method.setter
    def method(self, value: OptimConfig) -> None:
        _deprecated_attribute()
        self.optim = value

    def data_replicas(self) -> int:
        """How many data-parallel replicas the workers form (each pipeline group is one replica)."""
        if self.launch.strategy != PIPELINE_STRATEGY:
            return self.launch.num_workers
        return self.launch.num_workers // (self.launch.pipeline_size or self.launch.num_workers)

    def global_batch(self) -> int:
        """Samples per optimizer step over all workers."""
        return self.data.batch_size * self.data_replicas() * self.launch.accumulate_grad_batches

    def precision(self) -> str:
        if self.launch.precision != "auto":
            return self.launch.precision
        return "bf16-mixed" if self.launch.use_gpu else "32-true"


def _deprecated_attribute() -> None:
    deprecated("the job's 'method' section is now 'optim'. Fix: use cfg.optim (and optim= when building a job)")
