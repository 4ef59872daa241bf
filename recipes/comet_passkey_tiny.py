"""The headline at laptop scale: a tiny CoMeT trained on 256-token passkey samples finds the key
at 32x and 128x that length.

    python recipes/comet_passkey_tiny.py                      # train, register, evaluate (2-core CPU)
    python recipes/comet_passkey_tiny.py --preset no_gate     # ablation: RMT-style overwrite, no gate
    python recipes/comet_passkey_tiny.py --preset no_temp     # ablation: no temporary (FIFO) memory
    python recipes/comet_passkey_tiny.py --preset no_repeats  # ablation: the paper's gate training (no repeats)
    python recipes/comet_passkey_tiny.py --preset random_chunks   # the paper's random chunk boundaries

It trains a randomly initialised 2-layer Qwen3 (hidden 128) wrapped in CoMeT (chunks of 32 tokens,
8 global memory slots, a FIFO of 8 compression tokens, i.e. the last 64 tokens) on Ray Train,
tracks it in MLflow and registers it. Then, on the driver, its ``eval`` section (``eval.tasks: [passkey]``)
streams passkey haystacks of ``eval.passkey.multiples`` x the training length through the registered model
(``models:/<name>/<version>``), logs accuracy by length and depth plus the heat-map to the same MLflow run,
writes ``<eval.out_dir>/passkey.json`` and prints the JSON summary (``--eval.passkey.trials 5`` and the like
change it; ``--eval.tasks []`` trains and registers only). The haystack is the passkey literature's
repeated "The grass is green. ..." text.

A 256-token sample is 8 chunks. The FIFO reaches back 2 chunks, so a key hidden earlier can only
reach the question through the gated global memory; at 8k and 32k tokens that memory has to hold
the key over up to 256 and 1,024 chunk updates, where a sample has 8. Three training choices close
that gap (docs/eval.md has the runs with and without them):

- gate repeats (``comet.gate_repeat_max``): in training, each chunk's gated update counts, half the
  time, as k identical updates (the gate g becomes g**k, k log-uniform up to 4,096), so the loss
  asks the gate to hold a key over as many updates as a long haystack has;
- filler starts at any token (``data.options.filler_start``): with a fixed 256-token sample and
  sentence starts, the repeated filler ends before the question at a handful of offsets; a longer
  haystack ends at others, which the reader never saw;
- needles at the edges (``data.options.edge_depth_prob``): a uniform depth almost never puts the
  needle right before the question, where the evaluation's depth 1 puts it.

Besides the answer, the loss covers the key's second mention inside the needle (``label_needle``): a dense
copy signal for a model that starts from random weights. The first quarter of the steps runs on
128-token samples (``seq_len_schedule``), where the key is usually close to the question; a run
that starts at 256 tokens stalls at chance on the answer for hundreds of steps.
"""

from __future__ import annotations

import sys

from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER
from framework.job import (DataConfig, EvalConfig, LaunchConfig, OptimConfig, PasskeyEval, TrackingConfig,
                           tiny_qwen3)
from framework.launch.recipe_cli import main
from framework.methods.comet import CoMeTJob
from framework.models.comet import CoMeTConfig

TRAIN_LEN = 256


def tiny() -> CoMeTJob:
    return CoMeTJob(
        model=tiny_qwen3(hidden_size=128),
        # gate repeats: in training, a chunk's gated update may count as up to 4,096 identical ones (g -> g**k),
        # so 8-chunk samples teach the gate to hold a key over the 1,024 updates of a 32k haystack
        # a random model trained from scratch has no reading to keep: the paper's formulation (no neutral start)
        comet=CoMeTConfig(chunk_size=32, global_mem_size=8, temp_stride=8, temp_budget=8, adapter_rank=8,
                          gate_repeat_max=4096.0, neutral_start=False),
        optim=OptimConfig(lr=2e-3, memory_lr_multiplier=1.0, warmup_steps=20, grad_clip=1.0, min_lr_ratio=0.1),
        data=DataConfig(kind="passkey", seq_len=TRAIN_LEN, batch_size=32, num_samples=200_000, epochs=1,
                        options={"filler": PASSKEY_REPEAT_FILLER, "digits": 5, "label_needle": True,
                                 # the filler starts at any token, so training sees every phase of the repeated
                                 # filler right before the question (a longer haystack ends at other phases)
                                 "filler_start": "token",
                                 # 1 in 5 needles at exactly depth 0 or 1 (as the evaluation's edges)
                                 "edge_depth_prob": 0.2,
                                 # a length curriculum: the first 375 steps (x 32 samples) on 128 tokens
                                 "seq_len_schedule": [[0, TRAIN_LEN // 2], [375 * 32, TRAIN_LEN]]}),
        launch=LaunchConfig(run_name="comet_passkey_tiny", max_steps=1500, checkpoint_every_n_steps=250,
                            keep_checkpoints=2, cpus_per_worker=2),
        tracking=TrackingConfig(model_name="comet-passkey-tiny"),
        # after registration: 20 keys at each of 5 depths of haystacks 32x and 128x the training length
        eval=EvalConfig(tasks=["passkey"], out_dir="outputs/eval/passkey_tiny",
                        passkey=PasskeyEval(multiples=[32, 128], depths=[0.0, 0.25, 0.5, 0.75, 1.0], trials=20)),
    )


def no_gate() -> CoMeTJob:
    cfg = tiny()
    cfg.comet.global_gate, cfg.comet.gate_repeat_max = "overwrite", 1.0  # no gate, so nothing to repeat
    cfg.launch.run_name, cfg.tracking.model_name = "comet_passkey_tiny-no_gate", "comet-passkey-tiny-no-gate"
    return cfg


def no_temp() -> CoMeTJob:
    cfg = tiny()
    cfg.comet.temp_stride, cfg.comet.temp_budget = -1, 0
    cfg.launch.run_name, cfg.tracking.model_name = "comet_passkey_tiny-no_temp", "comet-passkey-tiny-no-temp"
    return cfg


def no_repeats() -> CoMeTJob:
    """The paper's training of the gate: every chunk's update counts once (comet.gate_repeat_max=1)."""
    cfg = tiny()
    cfg.comet.gate_repeat_max = 1.0
    cfg.launch.run_name, cfg.tracking.model_name = "comet_passkey_tiny-no_repeats", "comet-passkey-tiny-no-repeats"
    return cfg


def random_chunks() -> CoMeTJob:
    """The paper's random chunking (data_pipelines.chunking "random", 4-32 tokens a chunk): 8-16 memory
    updates per 256-token sample instead of 8. A step costs about 1.4x, so it runs 1000 steps."""
    cfg = tiny()
    cfg.data.options["chunking"] = {"strategy": "random", "chunk_size": 32, "min_chunk": 4}
    cfg.launch.max_steps = 1000
    cfg.launch.run_name, cfg.tracking.model_name = "comet_passkey_tiny-random_chunks", "comet-passkey-tiny-random-chunks"
    return cfg


PRESETS = {"tiny": tiny, "no_gate": no_gate, "no_temp": no_temp, "no_repeats": no_repeats,
           "random_chunks": random_chunks}


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="tiny", description=__doc__))
