"""Preset jobs the recipes share, in one place (a recipe derives its presets from these).

    from framework.presets import comet_paper, comet_tiny

* `comet_paper(seq_len, ...)`: the CoMeT paper's fine-tuning of Qwen3-4B: chunks of 2048, global memory 512,
  stride 8, temporary budget 2048, LR 5e-5 (x5 for the memory modules), 10 warmup steps, cosine decay, clip
  1.5, chat data with answer-only loss, 3 epochs, activation checkpointing
  (recipes/comet_32k.py at 32k, recipes/comet_128k_pipeline.py at 128k on the layer pipeline);
* `comet_tiny(...)`: a random 2-layer Qwen3 on a generated passkey task (chunks of 64), minutes on a CPU.

They live in the framework package (not recipes/) so that a recipe imports them whether it runs as
``python recipes/x.py`` from the repository root or under ``ray job submit --working-dir .``.
"""

from __future__ import annotations

from framework.job import BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig, tiny_qwen3
from framework.methods.comet import CoMeTJob
from framework.models.comet import CoMeTConfig

PAPER_BASE = "Qwen/Qwen3-4B"


def comet_paper(seq_len: int, run_name: str, model_name: str, **launch) -> CoMeTJob:
    """The paper's CoMeT fine-tuning at `seq_len` tokens; `launch` sets LaunchConfig fields (workers, strategy)."""
    return CoMeTJob(
        model=BaseModelConfig(base=PAPER_BASE),
        comet=CoMeTConfig(chunk_size=2048, global_mem_size=512, temp_stride=8, temp_budget=2048,
                          gradient_checkpointing=True),
        optim=OptimConfig(lr=5e-5, memory_lr_multiplier=5.0, warmup_steps=10, grad_clip=1.5),
        data=DataConfig(kind="chat", seq_len=seq_len, batch_size=1, epochs=3),
        launch=LaunchConfig(**{"checkpoint_every_n_steps": 100, **launch, "run_name": run_name}),
        tracking=TrackingConfig(model_name=model_name),
    )


def comet_tiny(run_name: str, model_name: str, *, warmup_steps: int, batch_size: int, num_samples: int,
               **launch) -> CoMeTJob:
    """A random 2-layer Qwen3 in CoMeT (chunks of 64, 8 global slots) on 256-token passkey samples."""
    return CoMeTJob(
        model=tiny_qwen3(),
        comet=CoMeTConfig(chunk_size=64, global_mem_size=8, temp_stride=8, temp_budget=64),
        optim=OptimConfig(lr=3e-3, memory_lr_multiplier=5.0, warmup_steps=warmup_steps, grad_clip=1.5),
        data=DataConfig(kind="passkey", seq_len=256, batch_size=batch_size, num_samples=num_samples, epochs=1),
        launch=LaunchConfig(**launch, run_name=run_name),
        tracking=TrackingConfig(model_name=model_name),
    )
