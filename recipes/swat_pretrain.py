"""SWAT: pretrain a sliding-window-attention model from scratch (sigmoid attention, balanced ALiBi
slopes and RoPE), on Ray Train, tracked in MLflow and registered. The method is in
docs/swat.md; the model is framework.models.swat.

    python recipes/swat_pretrain.py --preset tiny                          # a laptop: ~1 min on 2 CPU cores
    python recipes/swat_pretrain.py --preset tiny --swat.slopes none       # the Table 3 ablation
    ray job submit --working-dir . -- python recipes/swat_pretrain.py --num-workers 8 --use-gpu \\
        --tracking-uri http://mlflow:5000 --data.options '{"path": "s3://bucket/fineweb-edu-tokens"}'

The `paper` preset: the paper's 340M model (hidden 1024, 24 layers, 16 heads, window 128) on a
token store you prepare (`longctx data prepare`, e.g. FineWeb-Edu with the Llama-2 tokenizer), at
4,096 tokens per sample; 32 samples of 4,096 tokens per worker (0.5M tokens per step on 4 workers).
The paper gives no optimizer settings here: LR 3e-4 with 2,000 warmup steps and cosine decay to 10%
are this recipe's choice. The `tiny` preset: a 2-layer, 4-head SWAT of width 128, window 32, trained
at 4 x the window (128 tokens) on the Austen novels shipped with the project.
"""

from __future__ import annotations

import sys

from framework.job import BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig
from framework.launch.recipe_cli import main
from framework.methods.swat import SCRATCH, SWATArch, SWATJob


def paper() -> SWATJob:
    return SWATJob(
        model=BaseModelConfig(base=SCRATCH, tokenizer="meta-llama/Llama-2-7b-hf"),
        swat=SWATArch(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, window=128),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000, min_lr_ratio=0.1, weight_decay=0.1, grad_clip=1.0),
        data=DataConfig(kind="store_windows", seq_len=4096, batch_size=32, epochs=1),
        launch=LaunchConfig(run_name="swat_pretrain", checkpoint_every_n_steps=500),
        tracking=TrackingConfig(model_name="swat-340m"),
    )


def tiny() -> SWATJob:
    return SWATJob(
        model=BaseModelConfig(base=SCRATCH, tokenizer="project"),
        swat=SWATArch(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, window=32),
        optim=OptimConfig(lr=3e-3, warmup_steps=5, grad_clip=1.0),
        data=DataConfig(kind="text", seq_len=128, batch_size=8, epochs=1),
        launch=LaunchConfig(run_name="swat_pretrain-tiny", max_steps=30, checkpoint_every_n_steps=10),
        tracking=TrackingConfig(model_name="swat-tiny"),
    )


PRESETS = {"paper": paper, "tiny": tiny}

if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__))
