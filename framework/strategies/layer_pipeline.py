"""LayerPipelineStrategy: CoMeT's layer-level pipeline (wavefront over chunks) as a Lightning strategy.

    trainer = Trainer(devices=4, accelerator="cpu", strategy=LayerPipelineStrategy(pipeline_size=2))

A 2-D mesh pipeline x data (`mesh.PipelineMesh`). Inside a pipeline group every rank gets the same
sequence (the first rank's batch is broadcast) and runs all layers over its contiguous block of
chunks (`wavefront.pipeline_forward`, installed as the CoMeT model's forward). Weights are replicated
on every rank; after each backward the gradients are averaged over the whole world, i.e. over both
mesh dimensions. With `framework.methods.comet.CoMeTModule` the loss is the global token mean, so the
averaged gradient is that of one process running every sequence.

Processes and the default process group are made exactly as for Lightning's DDPStrategy (which this
extends); the DistributedDataParallel wrapper is not used: ranks of one pipeline may use different
subsets of the parameters (e.g. the memory gate is unused on a first chunk), which DDP rejects.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn

from .batch import share_batch
from .mesh import PipelineConfigError, PipelineMesh, check_job, check_mesh
from .p2p import PeerLink
from .wavefront import SCHEDULES, PipelinedForward


def _comet_model(module: torch.nn.Module):
    from framework.models.comet import CoMeTForCausalLM

    found = [m for m in module.modules() if isinstance(m, CoMeTForCausalLM)]
    if len(found) != 1:
        raise PipelineConfigError(
            f"LayerPipelineStrategy needs a LightningModule holding exactly one CoMeTForCausalLM; found "
            f"{len(found)}. Fix: train a CoMeT model (e.g. framework.methods.comet.CoMeTModule), or use ddp/fsdp")
    return found[0]


def all_reduce_mean(params, group=None, bucket_mb: float = 25.0) -> None:
    """Average the gradients of `params` over `group` in flat buckets. A missing gradient counts as zero
    (every rank takes part in every bucket, so no rank waits for a gradient another never had)."""
    world = dist.get_world_size(group)
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_kind = {}
    for p in params:
        by_kind.setdefault((p.grad.device, p.grad.dtype), []).append(p)
    limit = int(bucket_mb * 2**20)
    for plist in by_kind.values():
        bucket, size = [], 0
        for p in plist + [None]:
            if p is not None:
                bucket.append(p)
                size += p.grad.numel() * p.grad.element_size()
            if bucket and (p is None or size >= limit):
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                dist.all_reduce(flat, group=group)
                flat /= world
                offset = 0
                for q in bucket:
                    n = q.grad.numel()
                    q.grad.copy_(flat[offset:offset + n].view_as(q.grad))
                    offset += n
                bucket, size = [], 0


class LayerPipelineStrategy(DDPStrategy):
    """pipeline_size: ranks per pipeline group (None: every rank, i.e. no data parallelism); the world
    size must be a multiple. schedule: "wavefront" (the pipeline) or "naive" (rank r waits for rank r-1's
    whole forward; for comparisons). prefetch: layers whose memory a rank receives ahead of use.
    seq_len and chunk_size, when given, are checked against the mesh before training starts; otherwise
    the chunk count is checked on the first batch. Other keyword arguments go to DDPStrategy."""

    strategy_name = "layer_pipeline"

    def __init__(self, pipeline_size: int | None = None, schedule: str = "wavefront", prefetch: int = 2,
                 seq_len: int | None = None, chunk_size: int | None = None, **kwargs: Any):
        if schedule not in SCHEDULES:
            raise PipelineConfigError(f"schedule={schedule!r}: use one of {SCHEDULES}")
        if pipeline_size is not None and pipeline_size < 1:
            raise PipelineConfigError(f"pipeline_size={pipeline_size} must be >= 1 (or None for every rank)")
        super().__init__(**kwargs)
        self.pipeline_size, self.schedule, self.prefetch = pipeline_size, schedule, prefetch
        self.seq_len, self.chunk_size = seq_len, chunk_size
        self.mesh: PipelineMesh | None = None
        self._pipelined: PipelinedForward | None = None

    # ------------------------------------------------------------------ mesh
    def setup_distributed(self) -> None:
        self.set_world_ranks()  # the checks run before any process group exists
        if self.seq_len and self.chunk_size:
            check_job(self.seq_len, self.chunk_size, self.world_size, self.pipeline_size)
        else:
            check_mesh(self.world_size, self.pipeline_size)
        super().setup_distributed()
        self.mesh = PipelineMesh.build(self.pipeline_size)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Ranks of one pipeline share their data: the sampler shards over the data dimension only."""
        pipeline, data = check_mesh(self.world_size, self.pipeline_size)
        return dict(num_replicas=data, rank=self.global_rank // pipeline)

    # ------------------------------------------------------------------ model
    def setup(self, trainer) -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            self._install()

    def configure_ddp(self) -> None:
        """No DistributedDataParallel: gradients are averaged in `post_backward`."""
        self._install()

    def _install(self) -> None:
        if self._pipelined is not None:
            return
        model = _comet_model(self.lightning_module)
        mesh = self.mesh
        link = PeerLink(mesh.prev_rank, mesh.next_rank, mesh.pipeline_group, device=self.root_device,
                        prefetch=self.prefetch)
        self._pipelined = PipelinedForward(model, link, mesh.pipeline_rank, mesh.pipeline_size,
                                           self.schedule).install()

    def teardown(self) -> None:
        if self._pipelined is not None:
            self._pipelined.uninstall()
            self._pipelined = None
        super().teardown()

    # ------------------------------------------------------------------ data and gradients
    def batch_to_device(self, batch: Any, device: torch.device | None = None, dataloader_idx: int = 0) -> Any:
        batch = super().batch_to_device(batch, device, dataloader_idx)
        mesh = self.mesh
        if mesh is not None and mesh.pipeline_size > 1:
            batch = share_batch(batch, mesh.pipeline_ranks[0], mesh.pipeline_group, device or self.root_device)
        return batch

    def post_backward(self, closure_loss: torch.Tensor) -> None:
        if self.world_size > 1:
            all_reduce_mean(self.lightning_module.parameters())
