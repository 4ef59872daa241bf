"""CoMeT at 128k with the layer pipeline: one sequence's chunks split over the workers (wavefront).

    python recipes/comet_128k_pipeline.py --preset tiny            # a laptop: 2 Ray workers on CPU, gloo
    python recipes/comet_128k_pipeline.py --preset tiny --num-workers 4 --launch.cpus_per_worker 0.5
    python recipes/comet_128k_pipeline.py --preset tiny --num-workers 4 --launch.pipeline_size 2 \
        --launch.cpus_per_worker 0.5                                # a 2 x 2 mesh: 2 pipelines, 2 data replicas
    ray job submit --working-dir . -- python recipes/comet_128k_pipeline.py --num-workers 16 --use-gpu \
        --tracking-uri http://mlflow:5000 --launch.storage_path s3://bucket/runs --data.options '{...}'

The `paper` preset: the paper's 128k fine-tuning of Qwen3-4B on 16 GPUs. 131072-token windows in chunks
of 2048 (64 chunks, 4 per worker with one pipeline of 16), global memory 512, stride 8, temporary budget
2048, LR 5e-5 (x5 for the memory modules), 10 warmup steps, cosine decay, clip 1.5, chat data with
answer-only loss, activation checkpointing, bf16 on GPU. The `tiny` preset: a random 2-layer Qwen3 on a
generated passkey task, 2 CPU workers, 4 chunks per sequence (2 per worker).

The workers form a pipeline x data mesh: `--launch.pipeline_size P` gives num_workers / P pipeline
groups, each a data-parallel replica with its own batches; by default all workers form one pipeline.
The chunk count (seq_len / chunk_size) must be a multiple of P, and P must divide num_workers; both
are checked before anything starts.
"""

from __future__ import annotations

import sys

from framework.launch.config import DataConfig, JobConfig, LaunchConfig
from framework.launch.recipe_cli import main
from framework.methods.base_model import BaseModelConfig, tiny_qwen3
from framework.methods.optim import OptimConfig
from framework.models.comet import CoMeTConfig
from framework.tracking.store import TrackingConfig


def paper() -> JobConfig:
    return JobConfig(
        model=BaseModelConfig(base="Qwen/Qwen3-4B"),
        comet=CoMeTConfig(chunk_size=2048, global_mem_size=512, temp_stride=8, temp_budget=2048,
                          gradient_checkpointing=True),
        method=OptimConfig(lr=5e-5, memory_lr_multiplier=5.0, warmup_steps=10, grad_clip=1.5),
        data=DataConfig(kind="chat", seq_len=131072, batch_size=1, epochs=3),
        launch=LaunchConfig(num_workers=16, use_gpu=True, strategy="pipeline", run_name="comet_128k_pipeline",
                            checkpoint_every_n_steps=100),
        tracking=TrackingConfig(model_name="comet-128k"),
    )


def tiny() -> JobConfig:
    return JobConfig(
        model=tiny_qwen3(),
        comet=CoMeTConfig(chunk_size=64, global_mem_size=8, temp_stride=8, temp_budget=64),
        method=OptimConfig(lr=3e-3, memory_lr_multiplier=5.0, warmup_steps=2, grad_clip=1.5),
        data=DataConfig(kind="passkey", seq_len=256, batch_size=1, num_samples=512, epochs=1),
        launch=LaunchConfig(num_workers=2, strategy="pipeline", run_name="comet_128k_pipeline-tiny", max_steps=6,
                            checkpoint_every_n_steps=3),
        tracking=TrackingConfig(model_name="comet-128k-pipeline-tiny"),
    )


PRESETS = {"paper": paper, "tiny": tiny}


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__))
