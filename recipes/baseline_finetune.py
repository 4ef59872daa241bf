"""The attention baselines CoMeT is compared against: fine-tune a Hugging Face causal LM with full
attention, or with softmax sliding-window attention on the same weights, on Ray Train, tracked in
MLflow and registered.

    python recipes/baseline_finetune.py --preset tiny --attention full      # ~1 min on 2 CPU cores
    python recipes/baseline_finetune.py --preset tiny --attention sliding --attention.window 64
    ray job submit --working-dir . -- python recipes/baseline_finetune.py --attention sliding \\
        --num-workers 8 --use-gpu --tracking-uri http://mlflow:5000 --data.options '{"path": "s3://b/chat"}'

Sliding-window attention works on Llama, Mistral, Qwen2 and Qwen3 models (a Llama model runs as the
identical Mistral architecture, whose attention honours a window; see framework/models/sliding.py).
The saved model keeps its window: loading it again gives the same attention.

Presets. `paper`: the CoMeT paper's fine-tuning setting for the baselines (Qwen3-4B, 32k-token chat
samples with answer-only loss, LR 5e-5, 10 warmup steps, cosine, clip 1.5, 3 epochs; sliding window
4,096). `tiny`: a random 2-layer Qwen3 on the project tokenizer, 256-token windows of the shipped
Austen novels, sliding window 64. `smollm2`: the real SmolLM2-135M-Instruct weights (a Llama model;
install them once with `bash cluster/setup_smollm2.sh`), 1,024-token windows of the novels.
"""

from __future__ import annotations

import argparse
import sys

from framework.job import BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig, tiny_qwen3
from framework.launch.recipe_cli import main
from framework.methods.causal_lm import ATTENTION_KINDS, AttentionConfig, CausalLMJob


def paper() -> CausalLMJob:
    return CausalLMJob(
        model=BaseModelConfig(base="Qwen/Qwen3-4B"),
        attention=AttentionConfig(kind="full", window=4096, gradient_checkpointing=True),
        optim=OptimConfig(lr=5e-5, warmup_steps=10, grad_clip=1.5),
        data=DataConfig(kind="chat", seq_len=32768, batch_size=1, epochs=3),
        launch=LaunchConfig(run_name="baseline_finetune", checkpoint_every_n_steps=100),
        tracking=TrackingConfig(model_name="baseline-32k"),
    )


def tiny() -> CausalLMJob:
    return CausalLMJob(
        model=tiny_qwen3(),
        attention=AttentionConfig(kind="full", window=64),
        optim=OptimConfig(lr=3e-3, warmup_steps=5, grad_clip=1.5),
        data=DataConfig(kind="text", seq_len=256, batch_size=4, epochs=1),
        launch=LaunchConfig(run_name="baseline_finetune-tiny", max_steps=30, checkpoint_every_n_steps=10),
        tracking=TrackingConfig(model_name="baseline-tiny"),
    )


def smollm2() -> CausalLMJob:
    from framework.models.smollm2 import default_dir

    return CausalLMJob(
        model=BaseModelConfig(base=default_dir()),
        attention=AttentionConfig(kind="full", window=256, gradient_checkpointing=True),
        optim=OptimConfig(lr=2e-5, warmup_steps=5, grad_clip=1.0),
        data=DataConfig(kind="text", seq_len=1024, batch_size=1, epochs=1),
        launch=LaunchConfig(run_name="baseline_finetune-smollm2", max_steps=20, checkpoint_every_n_steps=10),
        tracking=TrackingConfig(model_name="baseline-smollm2"),
    )


PRESETS = {"paper": paper, "tiny": tiny, "smollm2": smollm2}


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attention", choices=ATTENTION_KINDS, help="full or sliding (default: the preset's); "
                        "the window is --attention.window")


def name_by_attention(args, cfg) -> None:
    """Full and sliding runs of one preset get their own run names (and so their own --resume auto) and
    registered model names, unless --run-name / --model-name say otherwise."""
    if args.run_name is None:
        cfg.launch.run_name = f"{cfg.launch.run_name}-{cfg.attention.kind}"
    if args.model_name is None:
        cfg.tracking.model_name = f"{cfg.tracking.model_name}-{cfg.attention.kind}"


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__, add_flags=add_flags, check=name_by_attention,
                  flag_fields={"attention": "attention.kind"}))
