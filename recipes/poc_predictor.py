"""PoC, performance-oriented context compression: measure how much of the uncompressed score a
compressor keeps on each context at several ratios (the labels), train a context-aware predictor of
that retention, and compare it with the context-agnostic mean retention curve on held-out
contexts; on Ray, under one parent MLflow run, the predictor registered. The method is in
docs/compression.md; the model is framework.models.compression.poc_predictor.

    python recipes/poc_predictor.py --preset tiny                          # ~3 min on 2 CPU cores
    python recipes/poc_predictor.py --labels.compressor models:/comi-qa/3 --preset paper
    ray job submit --working-dir . -- python recipes/poc_predictor.py --preset paper --num-workers 8 --use-gpu \\
        --tracking-uri http://mlflow:5000 --labels.path s3://bucket/poc/labels
    longctx compress --model models:/poc-predictor-tiny@champion --floor 0.9 inputs.jsonl

Stages (each a child run of the parent; --resume runs:/<parent> skips the finished ones):
``compressor`` trains a COMI (section ``compressor``, the comi method) unless --labels.compressor
names a registered one; ``labels`` measures the retention at every factor of --labels.factors on
--labels.data and caches it in the token-store format at --labels.path (a complete cache of the same
key is reused, never measured again); ``predictor`` trains the poc method on the cache's train
split; then the driver compares it with the mean retention curve (PPE, P@R) on the held-out split
and logs both, a JSON and a plot to the parent run.

Presets. `paper`: the predictor of the sources, a pruned Llama-3.2-1B (its embeddings + 2 blocks),
on labels of a registered compressor that you name (--labels.compressor) over {input, prompt,
answer} JSONL (--labels.data), scored by answer F1. `tiny`: a COMI as recipes/comi_qa.py's tiny
preset (ratios 2-32 drawn per batch), labels on 320 synthetic facts contexts of 64-256 tokens
scored by the reader's answer likelihood (a tiny reader's greedy answers are all wrong, so F1 gives
no graded labels), and a random 1-block predictor.
"""

from __future__ import annotations

import sys

from framework.job import BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig, tiny_qwen3
from framework.studies.poc import LabelSettings, PoCRecipe, run_pipeline
from framework.launch.recipe_cli import main
from framework.methods.comi import COMIJob, COMISettings
from framework.methods.poc import PoCSettings


def tiny_compressor() -> COMIJob:
    return COMIJob(
        model=tiny_qwen3(hidden_size=128),
        compression=COMISettings(encoder_layers=1, alignment="linear", decoder="full", ratio=8,
                                 train_ratios=[2, 4, 8, 16, 32]),
        optim=OptimConfig(lr=2e-3, warmup_steps=5, grad_clip=1.0),
        data=DataConfig(kind="qa_facts", seq_len=256, batch_size=8, epochs=1, options={"min_seq_len": 64}),
        launch=LaunchConfig(run_name="poc-compressor-tiny", max_steps=30, checkpoint_every_n_steps=30),
        tracking=TrackingConfig(model_name="poc-compressor-tiny"),
    )


def tiny() -> PoCRecipe:
    return PoCRecipe(
        model=tiny_qwen3(hidden_size=64),
        poc=PoCSettings(trunk_layers=1, ratio_bins=100, pair_attention="isolated"),
        optim=OptimConfig(lr=3e-3, warmup_steps=5, grad_clip=1.0),
        data=DataConfig(kind="poc_labels", seq_len=256, batch_size=16, epochs=3),
        launch=LaunchConfig(run_name="poc_predictor-tiny", max_steps=40, checkpoint_every_n_steps=40),
        tracking=TrackingConfig(model_name="poc-predictor-tiny"),
        labels=LabelSettings(score="likelihood"),
        compressor=tiny_compressor(),
    )


def paper() -> PoCRecipe:
    return PoCRecipe(
        model=BaseModelConfig(base="meta-llama/Llama-3.2-1B-Instruct"),
        poc=PoCSettings(trunk_layers=2, ratio_bins=100, pair_attention="isolated"),
        optim=OptimConfig(lr=1e-4, warmup_steps=100, weight_decay=0.01, grad_clip=1.0),
        data=DataConfig(kind="poc_labels", seq_len=512, batch_size=16, epochs=3),
        launch=LaunchConfig(run_name="poc_predictor", max_steps=None, checkpoint_every_n_steps=500),
        tracking=TrackingConfig(model_name="poc-predictor"),
        labels=LabelSettings(data={"kind": "qa_jsonl", "path": "nq-train.jsonl", "seq_len": 512,
                                   "num_samples": 20000}, score="f1", shards=8, validation_fraction=0.02),
        compressor=COMIJob(),
    )


PRESETS = {"tiny": tiny, "paper": paper}


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="tiny", description=__doc__, run=run_pipeline))
