"""The training data of one worker: a data_pipelines source, cut into this rank's batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

from framework.config import ConfigError
from framework.job import DataConfig


def source_spec(cfg: DataConfig) -> dict:
    spec = {"kind": cfg.kind, "seq_len": cfg.seq_len, "seed": cfg.seed, **cfg.options}
    if cfg.num_samples is not None:
        spec["num_samples"] = cfg.num_samples
    return spec


def build_source(cfg: DataConfig, tokenizer):
    import data_pipelines

    try:
        return data_pipelines.build_source(source_spec(cfg), tokenizer)
    except data_pipelines.DataConfigError as err:
        raise ConfigError(f"data: {err}") from err


def total_steps(cfg: DataConfig, num_samples: int, global_batch: int, max_steps: int | None) -> int:
    """max_steps when set, else enough steps for `epochs` passes over the source."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(cfg.epochs * num_samples / global_batch))


@dataclass(frozen=True)
class AttemptPlan:
    """What one attempt of a run trains. plan_steps x plan_batch samples is the run's schedule, fixed at its
    first start (warmup and max_steps count steps of plan_batch samples); this attempt starts at optimizer
    step start_step with start_samples consumed and takes global_batch samples a step until max_steps."""

    plan_steps: int
    plan_batch: int
    start_step: int
    start_samples: int
    global_batch: int

    @property
    def max_steps(self) -> int:
        remaining = max(0, self.plan_steps * self.plan_batch - self.start_samples)
        return self.start_step + math.ceil(remaining / self.global_batch)

    @property
    def batch_changed(self) -> bool:
        """True when the steps of this attempt are not steps of the plan (another world size or accumulation)."""
        return self.global_batch != self.plan_batch or self.start_samples != self.start_step * self.plan_batch

    def lr_steps(self):
        """What the LightningModule's LR schedule runs on: the plan's steps, or a SampleSchedule after a change."""
        from framework.methods.optim import SampleSchedule

        if not self.batch_changed:
            return self.plan_steps
        return SampleSchedule(self.plan_steps, self.plan_batch, self.start_step, self.start_samples, self.global_batch)

    def manifest_entry(self) -> dict:
        return {"plan_steps": self.plan_steps, "plan_batch": self.plan_batch}


def attempt_plan(cfg: DataConfig, launch_max_steps: int | None, num_samples: int | None, global_batch: int,
                 manifest: dict | None) -> AttemptPlan:
    """The schedule of this attempt: the plan of the run (from the checkpoint's manifest, else this job's)
    and where the checkpoint left it. The schedule counts samples, so a resume on another world size or
    accumulation keeps the epochs and the LR curve: launch.max_steps counts steps of the first attempt's
    global batch."""
    if manifest is None:
        plan_batch, start_step, start_samples = global_batch, 0, 0
    else:
        plan_batch = int((manifest.get("schedule") or {}).get("plan_batch") or manifest["data"]["global_batch"])
        start_step, start_samples = int(manifest["step"]), int(manifest["data"]["samples_consumed"])
    plan_steps = total_steps(cfg, num_samples or 0, plan_batch, launch_max_steps)
    return AttemptPlan(plan_steps, plan_batch, start_step, start_samples, global_batch)


def rank_loader(source, cfg: DataConfig, rank: int, world_size: int, start_sample: int):
    """A DataLoader that yields this rank's batches from global sample `start_sample` on."""
    from torch.utils.data import DataLoader

    from data_pipelines.loader import RankBatches

    batches = RankBatches(source, batch_size=cfg.batch_size, rank=rank, world_size=world_size, seed=cfg.seed,
                          shuffle=True, start_sample=start_sample)
    return DataLoader(batches, batch_size=None, num_workers=cfg.loader_workers,
                      persistent_workers=cfg.loader_workers > 0)
