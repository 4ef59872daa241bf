"""The training data of one worker: a data_pipelines source, cut into this rank's batches."""

from __future__ import annotations

import math

from framework.config import ConfigError
from framework.launch.config import DataConfig


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


def rank_loader(source, cfg: DataConfig, rank: int, world_size: int, start_sample: int):
    """A DataLoader that yields this rank's batches from global sample `start_sample` on."""
    from torch.utils.data import DataLoader

    from data_pipelines.loader import RankBatches

    batches = RankBatches(source, batch_size=cfg.batch_size, rank=rank, world_size=world_size, seed=cfg.seed,
                          shuffle=True, start_sample=start_sample)
    return DataLoader(batches, batch_size=None, num_workers=cfg.loader_workers,
                      persistent_workers=cfg.loader_workers > 0)
