"""COMI: compress a long context by merging token groups weighted by their marginal information gain
(relevance to the query minus redundancy), then answer from the compressed memory; on Ray Train,
tracked in MLflow and registered. The method is in docs/compression.md; the model is
framework.models.compression.

    python recipes/comi_qa.py --preset tiny                                # ~2 min on 2 CPU cores
    python recipes/comi_qa.py --preset tiny --compression.coarse false --compression.fine false   # mean pooling
    ray job submit --working-dir . -- python recipes/comi_qa.py --num-workers 8 --use-gpu \\
        --tracking-uri http://mlflow:5000 --data.options '{"path": "s3://bucket/nq-train.jsonl"}'
    longctx eval qa --model models:/comi-qa-tiny@champion --ratios 4,8,16,32

Presets. `paper`: the released COMI setting (Qwen3-4B; an 8-layer encoder; the 1-block LSA; LoRA
r=128, alpha 32 on the decoder's q/k/v/o; ratios 16 and 32 drawn per batch; LR 1e-5 with 10%
warmup of 10,000 steps, weight decay 0.01, cosine) on {input, prompt, answer} JSONL that you pass
with --data.options. `tiny`: a random 2-layer Qwen3 (width 128) on the project tokenizer, a 1-layer
encoder, a Linear alignment, ratio 8, on the synthetic key-value facts task (512-token contexts);
the whole decoder trains, since a random base has nothing to keep.
"""

from __future__ import annotations

import sys

from framework.job import BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig, tiny_qwen3
from framework.launch.recipe_cli import main
from framework.methods.comi import COMIJob, COMISettings


def paper() -> COMIJob:
    return COMIJob(
        model=BaseModelConfig(base="Qwen/Qwen3-4B"),
        compression=COMISettings(encoder_layers=8, alignment="block", decoder="lora", lora_rank=128, lora_alpha=32,
                                 ratio=16, train_ratios=[16, 32], chunk_tokens=10000, gradient_checkpointing=True),
        optim=OptimConfig(lr=1e-5, warmup_steps=1000, weight_decay=0.01, grad_clip=1.0),
        data=DataConfig(kind="qa_jsonl", seq_len=32768, batch_size=1, epochs=1,
                        options={"question_len": 128, "answer_len": 64}),
        launch=LaunchConfig(run_name="comi_qa", max_steps=10000, checkpoint_every_n_steps=500),
        tracking=TrackingConfig(model_name="comi-qa"),
    )


def tiny() -> COMIJob:
    return COMIJob(
        model=tiny_qwen3(hidden_size=128),
        compression=COMISettings(encoder_layers=1, alignment="linear", decoder="full", ratio=8),
        optim=OptimConfig(lr=2e-3, warmup_steps=10, grad_clip=1.0),
        data=DataConfig(kind="qa_facts", seq_len=512, batch_size=8, epochs=1),
        launch=LaunchConfig(run_name="comi_qa-tiny", max_steps=40, checkpoint_every_n_steps=20),
        tracking=TrackingConfig(model_name="comi-qa-tiny"),
    )


PRESETS = {"paper": paper, "tiny": tiny}

if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__))
