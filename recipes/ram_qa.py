"""RAM (Read As Human): compress a long context by reading the query-relevant segments closely and
skimming the rest, then answer from the compressed memory; on Ray Train, tracked in MLflow and
registered. The method is in docs/compression.md; the model is framework.models.compression.

    python recipes/ram_qa.py --preset tiny                                 # ~2 min on 2 CPU cores
    python recipes/ram_qa.py --preset tiny --compression.keep_sampling uniform
    ray job submit --working-dir . -- python recipes/ram_qa.py --num-workers 8 --use-gpu \\
        --tracking-uri http://mlflow:5000 --data.options '{"path": "s3://bucket/nq-train.jsonl"}'
    longctx eval qa --model models:/ram-qa-tiny@champion --ratios 4,8,16

Presets. `paper`: the released RAM setting (Qwen3-4B; an 8-layer encoder; 50-token segments; keep
fraction 0.125, about 7x; decoder q/k/v trained; LR 1e-4, clip 2.0, batch 1; contexts up to 32k
tokens) on {input, prompt, answer} JSONL that you pass with --data.options. The released code decays
the LR linearly; this recipe uses the shared warmup + cosine schedule. `tiny`: a random 2-layer
Qwen3 (width 128) on the project tokenizer, a 1-layer encoder, 16-token segments, on the synthetic
key-value facts task (512-token contexts); a random base has no language skill to keep, so the
whole decoder trains.
"""

from __future__ import annotations

import sys

from framework.job import BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig, tiny_qwen3
from framework.launch.recipe_cli import main
from framework.methods.ram import RAMJob, RAMSettings


def paper() -> RAMJob:
    return RAMJob(
        model=BaseModelConfig(base="Qwen/Qwen3-4B"),
        compression=RAMSettings(encoder_layers=8, segment_size=50, keep_fraction=0.125, decoder="attention",
                                gradient_checkpointing=True),
        optim=OptimConfig(lr=1e-4, warmup_steps=0, grad_clip=2.0),
        data=DataConfig(kind="qa_jsonl", seq_len=32768, batch_size=1, epochs=1,
                        options={"question_len": 128, "answer_len": 64}),
        launch=LaunchConfig(run_name="ram_qa", checkpoint_every_n_steps=500),
        tracking=TrackingConfig(model_name="ram-qa"),
    )


def tiny() -> RAMJob:
    return RAMJob(
        model=tiny_qwen3(hidden_size=128),
        compression=RAMSettings(encoder_layers=1, segment_size=16, keep_fraction=0.125, decoder="full"),
        optim=OptimConfig(lr=2e-3, warmup_steps=10, grad_clip=1.0),
        data=DataConfig(kind="qa_facts", seq_len=512, batch_size=8, epochs=1),
        launch=LaunchConfig(run_name="ram_qa-tiny", max_steps=40, checkpoint_every_n_steps=20),
        tracking=TrackingConfig(model_name="ram-qa-tiny"),
    )


PRESETS = {"paper": paper, "tiny": tiny}

if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__))
