"""The "Data Distribution Matters" autoencoder study at small scale: pretrain small LMs on different
corpora, pair them as trainable encoder and frozen decoder, train a context autoencoder for every
pair, and correlate reconstruction quality with the entropy each model measures; on Ray Train,
tracked in MLflow (one parent run, a child run per job) and registered. docs/compression.md has
the design and the findings.

    python recipes/ae_study.py --preset tiny                       # minutes on 2 CPU cores
    python recipes/ae_study.py --preset tiny --resume auto         # finished stages are not run again
    ray job submit --working-dir . -- python recipes/ae_study.py --preset paper --num-workers 8 --use-gpu \\
        --tracking-uri http://mlflow:5000

Stages: ``lm-<corpus>`` pretrains a random LM (the ``model`` section) on each corpus of
``study.corpora``; ``ae-<encoder corpus>-<decoder corpus>`` trains an autoencoder whose encoder
starts from the first LM's registered weights and whose frozen decoder is the second LM, on the
decoder's corpus (``study.ae_data``). Then, on the driver, every autoencoder reconstructs held-out
texts of every corpus; the recipe logs to the parent run the Spearman correlations (with p-values)
of F1 against the encoder- and the decoder-measured entropy, the scatter plots, the
aligned-against-misaligned table and a JSON of it all (also printed on stdout).

Presets. `tiny`: 2-layer Qwen3 LMs (width 64) on the project tokenizer, pretrained on 32-token
windows of the shipped Austen novels and of generated Markov-chain text whose temperature (so
entropy) is drawn per sample; k = 8 slots (ratio 4); minutes on a laptop. `paper`: the paper's
setting as far as the sources give it (about 200M-parameter LMs, k = 128 slots at ratio 4, so
512-token inputs), on the same two corpora; a GPU cluster's job.
"""

from __future__ import annotations

import sys

from framework.job import BaseModelConfig, LaunchConfig, OptimConfig, TrackingConfig, tiny_qwen3
from framework.launch.recipe_cli import main
from framework.methods.autoencoder import AutoencoderSettings
from framework.studies.ae_study import AEStudyConfig, StudySettings, run_study


# ---------------------------------------------------------------------------------------------- presets
def tiny() -> AEStudyConfig:
    return AEStudyConfig(
        model=tiny_qwen3(hidden_size=64),
        study=StudySettings(seq_len=32, lm_steps=150, lm_batch_size=16, ae_steps=200, ae_batch_size=16),
        lm_optim=OptimConfig(lr=3e-3, warmup_steps=10, grad_clip=1.0),
        ae_optim=OptimConfig(lr=2e-3, warmup_steps=10, grad_clip=1.0),
        autoencoder=AutoencoderSettings(slots=8, slot_mode="memory_tokens", eval_samples=32, eval_batch_size=32),
        launch=LaunchConfig(run_name="ae_study-tiny", checkpoint_every_n_steps=1000),
        tracking=TrackingConfig(model_name="ae-study-tiny"),
    )


def paper() -> AEStudyConfig:
    arch = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=16,
                num_key_value_heads=8, head_dim=64, max_position_embeddings=4096)
    return AEStudyConfig(
        model=BaseModelConfig(base="random:qwen3", tokenizer="project", arch=arch),
        study=StudySettings(seq_len=512, lm_steps=20_000, lm_batch_size=32, ae_steps=5_000, ae_batch_size=32),
        lm_optim=OptimConfig(lr=3e-4, warmup_steps=500, grad_clip=1.0),
        ae_optim=OptimConfig(lr=1e-4, warmup_steps=100, grad_clip=1.0),
        autoencoder=AutoencoderSettings(slots=128, slot_mode="memory_tokens", eval_samples=512, eval_batch_size=32),
        launch=LaunchConfig(run_name="ae_study", checkpoint_every_n_steps=1000),
        tracking=TrackingConfig(model_name="ae-study"),
    )


PRESETS = {"tiny": tiny, "paper": paper}

if __name__ == "__main__":
    sys.exit(main(PRESETS, default="tiny", description=__doc__, run=run_study))
