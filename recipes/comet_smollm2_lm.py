"""CoMeT on real weights, trained as a language model: SmolLM2-135M reads long natural text with memory.

    bash cluster/setup_smollm2.sh                       # once: install and convert SmolLM2 (offline)
    python recipes/comet_smollm2_lm.py                  # the cpu preset (a 2-core CPU)
    python recipes/comet_smollm2_lm.py --preset gpu --use-gpu
    python recipes/comet_smollm2_lm.py --eval.heldout_lm.lengths 8192,16384,32768,65536
    python recipes/comet_smollm2_lm.py --preset tiny     # no SmolLM2: a random tiny model, windows of 512, 1024

CoMeT starts as the base model (``comet.neutral_start``: every text row reads memory and compression rows
through a per-head gate that starts at 0), so training only has to teach the memory what to carry. The
language-model loss is on every text token of windows of the shipped Austen novels (data kind ``text``); the
last ``HELD_OUT`` of the token stream is never trained on and is where the model is evaluated. The backbone
is frozen in the cpu preset (only CoMeT's own parameters train: 659,790 for SmolLM2, 0.49% of the model) and
trains with LoRA in the gpu preset.

After training and registration, on the driver, the job's ``eval`` section (``tasks: [heldout_lm]`` with
``base.enabled``; every setting is an ``--eval.*`` override, ``--help-config`` lists them):
``framework.eval.perplexity.compare_with_base`` on ``eval.heldout_lm.docs`` held-out windows of every
``eval.heldout_lm.lengths`` length (default 8192,16384), from the last ``eval.heldout_lm.fraction`` (0.2) of the
novels: the registered CoMeT model, the base model reading each chunk's window alone, and the base model at full
context (up to its max_position_embeddings, 8,192, or ``eval.base.max_len``). One JSON
(``<eval.out_dir>/smollm2_lm.json``) and the metrics ``eval/lm/{comet,base_window,base_full}_ppl_<length>`` go to
the training run; ``--eval.tasks []`` trains and registers only. The old flags ``--eval-lengths``,
``--eval-docs``, ``--eval-out`` and ``--no-eval`` still work, with a deprecation line.

Presets:

``cpu`` (default): chunks of 512, 64 global memory slots, a compression token every 8 text tokens with a FIFO
budget of 128; samples of 1,536 tokens (3 chunks), batch 1, 48 steps at LR 3e-3 on CoMeT's parameters, fp32.
``gpu``: samples of 8,192 tokens, batch 8, 1,000 steps, LoRA rank 16 on the backbone at LR 1e-4 and 1e-3 on
CoMeT's parameters, bf16-mixed, gradient checkpointing.
``tiny``: the same recipe on a random 2-layer Qwen3 with the project tokenizer (chunks of 64, samples of 256, 8
steps, held-out windows of 512 and 1,024 tokens): the plumbing in about a minute, without SmolLM2; its
perplexities mean nothing.
"""

from __future__ import annotations

import os
import sys

from framework.job import (RANDOM_PREFIX, BaseCompareEval, BaseModelConfig, DataConfig, EvalConfig, HeldoutLMEval,
                           LaunchConfig, OptimConfig, TrackingConfig, tiny_qwen3)
from framework.launch.recipe_cli import main
from framework.methods.comet import CoMeTJob
from framework.models.comet import CoMeTConfig
from framework.models.smollm2 import default_dir

HELD_OUT = 0.2  # the last fifth of the novels' token stream: evaluation only
EVAL_LENGTHS = [8192, 16384]
# the recipe's old evaluation flags, now its eval section (recipe_cli.main prints a deprecation line)
EVAL_ALIASES = {"--eval-lengths": ("eval.heldout_lm.lengths", None), "--eval-docs": ("eval.heldout_lm.docs", None),
                "--eval-out": ("eval.out_dir", None), "--no-eval": ("eval.tasks", "[]")}


def cpu() -> CoMeTJob:
    return CoMeTJob(
        model=BaseModelConfig(base=default_dir()),
        comet=CoMeTConfig(chunk_size=512, global_mem_size=64, temp_stride=8, temp_budget=128, adapter_rank=8),
        optim=OptimConfig(lr=3e-3, memory_lr_multiplier=1.0, backbone="frozen", warmup_steps=4, grad_clip=1.0,
                           min_lr_ratio=0.1),
        data=DataConfig(kind="text", seq_len=1536, batch_size=1, epochs=1,
                        options={"split": "train", "validation_fraction": HELD_OUT}),
        launch=LaunchConfig(run_name="comet_smollm2_lm", max_steps=48, checkpoint_every_n_steps=24,
                            keep_checkpoints=1, cpus_per_worker=2),
        tracking=TrackingConfig(model_name="comet-smollm2-lm"),
        # after registration: CoMeT next to its own backbone (each chunk's window alone, and full context) on
        # windows of the held-out tail that the training split never reads
        eval=EvalConfig(tasks=["heldout_lm"], out_dir="outputs/eval/comet_smollm2_lm", summary_file="smollm2_lm.json",
                        heldout_lm=HeldoutLMEval(lengths=list(EVAL_LENGTHS), docs=1, fraction=HELD_OUT),
                        base=BaseCompareEval(enabled=True)),
    )


def gpu() -> CoMeTJob:
    cfg = cpu()
    cfg.comet.gradient_checkpointing = True
    cfg.optim = OptimConfig(lr=1e-3, memory_lr_multiplier=1.0, backbone="lora", backbone_lr=1e-4, lora_rank=16,
                             warmup_steps=20, grad_clip=1.0, min_lr_ratio=0.1)
    cfg.data.seq_len, cfg.data.batch_size = 8192, 8
    cfg.launch.max_steps, cfg.launch.checkpoint_every_n_steps, cfg.launch.use_gpu = 1000, 200, True
    cfg.launch.precision = "bf16-mixed"
    cfg.launch.run_name, cfg.tracking.model_name = "comet_smollm2_lm-gpu", "comet-smollm2-lm-gpu"
    return cfg


def tiny() -> CoMeTJob:
    """The recipe's plumbing in a minute, without SmolLM2: a random 2-layer Qwen3 on the project tokenizer."""
    cfg = cpu()
    cfg.model = tiny_qwen3()
    cfg.comet = CoMeTConfig(chunk_size=64, global_mem_size=8, temp_stride=8, temp_budget=32)
    cfg.data.seq_len, cfg.launch.max_steps, cfg.launch.checkpoint_every_n_steps = 256, 8, 4
    cfg.launch.run_name, cfg.tracking.model_name = "comet_smollm2_lm-tiny", "comet-lm-tiny"
    cfg.eval.heldout_lm.lengths = [512, 1024]
    return cfg


PRESETS = {"cpu": cpu, "gpu": gpu, "tiny": tiny}


def check_base(args, cfg: CoMeTJob) -> None:
    """A missing base folder fails before training (ValueError: exit 2)."""
    base = cfg.model.base
    if not (base.startswith(RANDOM_PREFIX) or os.path.isfile(os.path.join(base, "config.json"))):
        raise ValueError(f"the SmolLM2 folder {base} does not exist (or holds no config.json). Fix: run "
                         "`bash cluster/setup_smollm2.sh` once, or point SMOLLM2_DIR (or --model.base) at a converted "
                         "folder")


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="cpu", description=__doc__, check=check_base, eval_aliases=EVAL_ALIASES))
