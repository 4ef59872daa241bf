"""CoMeT at 128k with the layer pipeline: one sequence's chunks split over the workers (wavefront).

    python recipes/comet_128k_pipeline.py --preset tiny            # a laptop: 2 Ray workers on CPU, gloo
    python recipes/comet_128k_pipeline.py --preset tiny --num-workers 4 --launch.cpus_per_worker 0.5
    python recipes/comet_128k_pipeline.py --preset tiny --num-workers 4 --launch.pipeline_size 2 \
        --launch.cpus_per_worker 0.5                                # a 2 x 2 mesh: 2 pipelines, 2 data replicas
    ray job submit --working-dir . -- python recipes/comet_128k_pipeline.py --num-workers 16 --use-gpu \
        --tracking-uri http://mlflow:5000 --launch.storage_path s3://bucket/runs --data.options '{...}'

The `paper` preset (framework.presets.comet_paper): the paper's 128k fine-tuning of Qwen3-4B on 16 GPUs.
131072-token windows in chunks of 2048 (64 chunks, 4 per worker with one pipeline of 16), global memory 512,
stride 8, temporary budget 2048, LR 5e-5 (x5 for the memory modules), 10 warmup steps, cosine decay, clip
1.5, chat data with answer-only loss, activation checkpointing, bf16 on GPU. The `tiny` preset: a random
2-layer Qwen3 on a generated passkey task, 2 CPU workers, 4 chunks per sequence (2 per worker).

The workers form a pipeline x data mesh: `--launch.pipeline_size P` gives num_workers / P pipeline
groups, each a data-parallel replica with its own batches; by default all workers form one pipeline.
The chunk count (seq_len / chunk_size) must be a multiple of P, and P must divide num_workers; both
are checked before anything starts.
"""

from __future__ import annotations

import sys

from framework.launch.recipe_cli import main
from framework.methods.comet import CoMeTJob
from framework.presets import comet_paper, comet_tiny


def paper() -> CoMeTJob:
    return comet_paper(131072, run_name="comet_128k_pipeline", model_name="comet-128k", num_workers=16,
                       use_gpu=True, strategy="pipeline")


def tiny() -> CoMeTJob:
    return comet_tiny("comet_128k_pipeline-tiny", "comet-128k-pipeline-tiny", warmup_steps=2, batch_size=1,
                      num_samples=512, num_workers=2, strategy="pipeline", max_steps=6, checkpoint_every_n_steps=3)


PRESETS = {"paper": paper, "tiny": tiny}


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__))
