"""CoMeT at 32k: the paper's fine-tuning setting, trained on Ray Train and tracked in MLflow.

    python recipes/comet_32k.py --preset tiny                      # a laptop: local Ray, ./mlflow.db, CPU
    ray job submit --working-dir . -- python recipes/comet_32k.py --num-workers 8 --use-gpu \
        --tracking-uri http://mlflow:5000 --launch.storage_path s3://bucket/runs --data.options '{...}'

The `paper` preset: a Qwen3 base, 32k-token windows, chunk 2048, global memory 512, stride 8,
temporary budget 2048, LR 5e-5 (x5 for the memory modules), 10 warmup steps, cosine decay,
clip 1.5, chat data with answer-only loss, 3 epochs. The `tiny` preset: a random 2-layer Qwen3
with the project's tokenizer on a generated passkey task, a few minutes on a 2-core CPU.
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
        data=DataConfig(kind="chat", seq_len=32768, batch_size=1, epochs=3),
        launch=LaunchConfig(run_name="comet_32k", checkpoint_every_n_steps=100),
        tracking=TrackingConfig(model_name="comet-32k"),
    )


def tiny() -> JobConfig:
    return JobConfig(
        model=tiny_qwen3(),
        comet=CoMeTConfig(chunk_size=64, global_mem_size=8, temp_stride=8, temp_budget=64),
        method=OptimConfig(lr=3e-3, memory_lr_multiplier=5.0, warmup_steps=5, grad_clip=1.5),
        data=DataConfig(kind="passkey", seq_len=256, batch_size=2, num_samples=4096, epochs=1),
        launch=LaunchConfig(run_name="comet_32k-tiny", max_steps=30, checkpoint_every_n_steps=10),
        tracking=TrackingConfig(model_name="comet-32k-tiny"),
    )


PRESETS = {"paper": paper, "tiny": tiny}

if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__))
