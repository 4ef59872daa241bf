"""The 2-D device mesh of the layer pipeline (pipeline x data) and the checks made before training.

Global rank = data_index * pipeline_size + pipeline_index, so the ranks of one pipeline group are
neighbours (on one node when pipeline_size divides the GPUs per node).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.distributed as dist


class PipelineConfigError(ValueError):
    """The pipeline cannot run with these sizes; the message names the cause and the fix."""


def check_mesh(world_size: int, pipeline_size: int | None) -> tuple[int, int]:
    """(pipeline_size, data_size) for `world_size` ranks; None means one pipeline over every rank."""
    pipeline = world_size if pipeline_size is None else int(pipeline_size)
    if pipeline < 1:
        raise PipelineConfigError(f"pipeline_size={pipeline_size} must be >= 1. Fix: pipeline_size=2, or None "
                                  "for one pipeline over every rank")
    if world_size % pipeline:
        fits = [p for p in range(1, world_size + 1) if world_size % p == 0]
        raise PipelineConfigError(
            f"a pipeline x data mesh does not fit the world size: pipeline_size={pipeline} does not divide "
            f"{world_size} ranks. Fix: use a pipeline_size in {fits}, or run on a multiple of {pipeline} ranks")
    return pipeline, world_size // pipeline


def check_chunks(n_chunks: int, pipeline_size: int, chunk_size: int | None = None) -> int:
    """Chunks per pipeline rank; raises unless the chunks split evenly over the pipeline group."""
    if n_chunks % pipeline_size:
        hint = ""
        if chunk_size:
            lengths = ", ".join(str(k * pipeline_size * chunk_size) for k in range(1, 4))
            hint = f" (sequence lengths {lengths}, ... with chunk_size {chunk_size})"
        raise PipelineConfigError(
            f"{n_chunks} chunks do not split evenly over {pipeline_size} pipeline ranks: every rank needs the same "
            f"number of contiguous chunks. Fix: make the chunk count a multiple of {pipeline_size}{hint}, "
            f"or use a pipeline_size that divides {n_chunks}")
    return n_chunks // pipeline_size


def check_job(seq_len: int, chunk_size: int, world_size: int, pipeline_size: int | None = None) -> tuple[int, int]:
    """Every check that can run before any worker starts. Returns (pipeline_size, data_size)."""
    pipeline, data = check_mesh(world_size, pipeline_size)
    check_chunks(math.ceil(seq_len / chunk_size), pipeline, chunk_size)
    return pipeline, data


@dataclass
class PipelineMesh:
    """This rank's place in the mesh and the process groups of its pipeline and data dimensions."""

    world_size: int
    rank: int
    pipeline_size: int
    data_size: int
    pipeline_rank: int
    data_rank: int
    pipeline_ranks: list  # global ranks of this rank's pipeline group, in pipeline order
    pipeline_group: object = None
    data_group: object = None

    @property
    def prev_rank(self) -> int | None:
        return self.pipeline_ranks[self.pipeline_rank - 1] if self.pipeline_rank > 0 else None

    @property
    def next_rank(self) -> int | None:
        last = self.pipeline_rank == self.pipeline_size - 1
        return None if last else self.pipeline_ranks[self.pipeline_rank + 1]

    @classmethod
    def build(cls, pipeline_size: int | None = None) -> "PipelineMesh":
        """Collective: every rank of the default process group must call it, in the same order."""
        if not (dist.is_available() and dist.is_initialized()):
            raise PipelineConfigError("the layer pipeline needs torch.distributed initialised. Fix: run under a "
                                      "Lightning Trainer with LayerPipelineStrategy, Ray Train, or call "
                                      "dist.init_process_group first")
        world, rank = dist.get_world_size(), dist.get_rank()
        pipeline, data = check_mesh(world, pipeline_size)
        pipeline_group = data_group = None
        for d in range(data):  # every rank creates every group (new_group is collective)
            ranks = list(range(d * pipeline, (d + 1) * pipeline))
            group = dist.new_group(ranks) if pipeline < world else dist.group.WORLD
            if rank in ranks:
                pipeline_group = group
        for p in range(pipeline):
            ranks = list(range(p, world, pipeline))
            group = dist.new_group(ranks) if data < world else dist.group.WORLD
            if rank in ranks:
                data_group = group
        d, p = divmod(rank, pipeline)
        return cls(world, rank, pipeline, data, p, d, list(range(d * pipeline, (d + 1) * pipeline)),
                   pipeline_group, data_group)
