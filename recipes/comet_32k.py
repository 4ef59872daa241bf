"""CoMeT at 32k: the paper's fine-tuning setting, trained on Ray Train and tracked in MLflow.

    python recipes/comet_32k.py --preset tiny                      # a laptop: local Ray, ./mlflow.db, CPU
    ray job submit --working-dir . -- python recipes/comet_32k.py --num-workers 8 --use-gpu \
        --tracking-uri http://mlflow:5000 --launch.storage_path s3://bucket/runs --data.options '{...}'

The `paper` preset (framework.presets.comet_paper): a Qwen3 base, 32k-token windows, chunk 2048, global
memory 512, stride 8, temporary budget 2048, LR 5e-5 (x5 for the memory modules), 10 warmup steps, cosine
decay, clip 1.5, chat data with answer-only loss, 3 epochs. The `tiny` preset: a random 2-layer Qwen3 with
the project's tokenizer on a generated passkey task, a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import sys

from framework.launch.recipe_cli import main
from framework.methods.comet import CoMeTJob
from framework.presets import comet_paper, comet_tiny


def paper() -> CoMeTJob:
    return comet_paper(32768, run_name="comet_32k", model_name="comet-32k")


def tiny() -> CoMeTJob:
    return comet_tiny("comet_32k-tiny", "comet-32k-tiny", warmup_steps=5, batch_size=2, num_samples=4096,
                      max_steps=30, checkpoint_every_n_steps=10)


PRESETS = {"paper": paper, "tiny": tiny}

if __name__ == "__main__":
    sys.exit(main(PRESETS, default="paper", description=__doc__))
