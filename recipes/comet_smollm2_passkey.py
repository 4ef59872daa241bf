"""CoMeT on real weights: fine-tune SmolLM2-135M at 2k tokens, then find the passkey at 8k-64k, next to
the base model with full attention (its own limit: max_position_embeddings = 8192).

    bash cluster/setup_smollm2.sh                                # once: install and convert SmolLM2 (offline)
    python recipes/comet_smollm2_passkey.py                      # the cpu preset: over an hour on a 2-core CPU
    python recipes/comet_smollm2_passkey.py --preset gpu --use-gpu
    SMOLLM2_DIR=/data/smollm2 python recipes/comet_smollm2_passkey.py   # or --model.base /data/smollm2

The base is the SmolLM2-135M-Instruct folder written by ``cluster/setup_smollm2.sh`` (default
``~/.cache/longctx/smollm2-135m-instruct``, or ``$SMOLLM2_DIR``), with its own tokenizer
(byte-level BPE that splits digits one token each, as the passkey task needs). CoMeT wraps it and
is fine-tuned on Ray Train, tracked in MLflow and registered, on 2,048-token passkey samples
whose haystack is the shipped Austen novels (so the model also keeps reading real prose). Then, on
the driver, the job's ``eval`` section (``tasks: [passkey, perplexity]`` with ``base.enabled``; every
setting is an ``--eval.*`` override, ``--help-config`` lists them):

* the registered CoMeT model (``models:/<name>/<version>``) streams passkey haystacks of
  ``eval.passkey.lengths`` tokens (default 8192,16384,32768,65536; the literature's "The grass is
  green..." filler, ``--eval.passkey.filler novels`` for the novels) and is scored for perplexity on
  windows of the same lengths of the novels;
* the base model runs the very same haystacks and windows with full attention (one prefill, greedy
  decode). Lengths past its ``max_position_embeddings`` are beyond what it was trained for; they
  are still run up to ``eval.base.max_len`` (default: every length on a GPU; on a CPU only up to
  8192, since a 64k full-attention prefill takes about half an hour on 2 cores) and otherwise
  reported as not run. A length that runs out of memory is reported as such.

One JSON summary (CoMeT and base side by side, by length) goes to stdout and
``<eval.out_dir>/smollm2_passkey.json``; it, both passkey heat-maps and the metrics
(``eval/passkey/*`` for CoMeT, ``eval/base/passkey/*``, ``eval/{comet,base}/ppl_<length>``) are
logged to the training run.

Presets:

``cpu`` (default): 40 steps of batch 1 at 2,048 tokens, gradient checkpointing, fp32. Chunks of 512
tokens (4 per sample, so memory is written and read 3 times per sample); 64 global memory slots
(enough for a 5-digit key and context, small next to the 512-token chunk); one compression token
every 8 text tokens with a FIFO budget of 128 (the last 1,024 tokens, half a sample, so a key in the
first half of a sample can only reach the question through the gated global memory, as it must at
8k+). LR 1e-4 for the backbone, 10x for the new memory modules, which start from scratch and get
only a few dozen updates. A step took about 50 s on 2 otherwise idle cores (benchmarks/results/smollm2_cpu_partial.json, the
first steps of a run), i.e. over half an hour of training.
Evaluation streams about 240k tokens through CoMeT (1 trial at depth 0.5 plus 1 perplexity window
at each of 8k-64k), and the base runs the 8k haystack and window. Add depths (--eval.passkey.depths 0,0.5,1)
and the evaluation grows in proportion. This is a working demonstration of the pipeline on real weights,
not a converged model: 40 updates are unlikely to teach the memory to carry a key across 64k tokens.

``gpu``: 600 steps of batch 8, bf16-mixed, LR 5e-5 (5x for memory, the paper's ratio), 5 trials
at depths 0-1 in quarters and 4 perplexity windows per length; the base runs at every length.
"""

from __future__ import annotations

import os
import sys

from framework.job import (RANDOM_PREFIX, BaseCompareEval, BaseModelConfig, DataConfig, EvalConfig, LaunchConfig,
                           OptimConfig, PasskeyEval, PerplexityEval, TrackingConfig)
from framework.launch.recipe_cli import main
from framework.methods.comet import CoMeTJob
from framework.models.comet import CoMeTConfig
from framework.models.smollm2 import default_dir

TRAIN_LEN = 2048
EVAL_LENGTHS = [8192, 16384, 32768, 65536]


def cpu() -> CoMeTJob:
    return CoMeTJob(
        model=BaseModelConfig(base=default_dir()),  # tokenizer None: SmolLM2's own
        comet=CoMeTConfig(chunk_size=512, global_mem_size=64, temp_stride=8, temp_budget=128, adapter_rank=8,
                          gradient_checkpointing=True),
        optim=OptimConfig(lr=1e-4, memory_lr_multiplier=10.0, warmup_steps=4, grad_clip=1.0, min_lr_ratio=0.1),
        data=DataConfig(kind="passkey", seq_len=TRAIN_LEN, batch_size=1, num_samples=10_000, epochs=1,
                        options={"digits": 5}),  # no filler: the shipped novels
        launch=LaunchConfig(run_name="comet_smollm2_passkey", max_steps=40, checkpoint_every_n_steps=20,
                            keep_checkpoints=1, cpus_per_worker=2),
        tracking=TrackingConfig(model_name="comet-smollm2-passkey"),
        # after registration, what a 2-core CPU affords: 1 key at depth 0.5 and 1 novel window per length,
        # CoMeT and the base model (full attention, up to its max_position_embeddings) side by side
        eval=EvalConfig(tasks=["passkey", "perplexity"], out_dir="outputs/eval/comet_smollm2",
                        summary_file="smollm2_passkey.json",
                        passkey=PasskeyEval(lengths=list(EVAL_LENGTHS), depths=[0.5], trials=1, filler="repeat",
                                            digits=5, batch_size=1),
                        perplexity=PerplexityEval(docs=1), base=BaseCompareEval(enabled=True)),
    )


def gpu() -> CoMeTJob:
    cfg = cpu()
    cfg.optim = OptimConfig(lr=5e-5, memory_lr_multiplier=5.0, warmup_steps=20, grad_clip=1.0, min_lr_ratio=0.1)
    cfg.data.batch_size, cfg.data.num_samples = 8, 100_000
    cfg.launch.max_steps, cfg.launch.checkpoint_every_n_steps, cfg.launch.use_gpu = 600, 200, True
    cfg.launch.run_name, cfg.tracking.model_name = "comet_smollm2_passkey-gpu", "comet-smollm2-passkey-gpu"
    cfg.eval.passkey.depths, cfg.eval.passkey.trials = [0.0, 0.25, 0.5, 0.75, 1.0], 5  # what a lent GPU affords
    cfg.eval.perplexity.docs = 4
    return cfg


PRESETS = {"cpu": cpu, "gpu": gpu}


def check_base(cfg: CoMeTJob) -> None:
    """model.base must be a converted folder (or a random base); raises ValueError with the fix."""
    base = cfg.model.base
    if base.startswith(RANDOM_PREFIX) or os.path.isfile(os.path.join(base, "config.json")):
        return
    raise ValueError(f"the SmolLM2 folder {base} does not exist (or holds no config.json). Fix: run "
                     f"`bash cluster/setup_smollm2.sh{'' if base == default_dir() else ' ' + base}` once to install "
                     "and convert it, or point SMOLLM2_DIR (or --model.base) at a converted folder")


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="cpu", description=__doc__, check=lambda args, cfg: check_base(cfg)))
