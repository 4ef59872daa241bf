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
the driver:

* the registered CoMeT model (``models:/<name>/<version>``) streams passkey haystacks of
  ``--eval-lengths`` tokens (default 8192,16384,32768,65536; the literature's "The grass is
  green..." filler, ``--eval-filler novels`` for the novels) and is scored for perplexity on
  windows of the same lengths of the novels;
* the base model runs the very same haystacks and windows with full attention (one prefill, greedy
  decode). Lengths past its ``max_position_embeddings`` are beyond what it was trained for; they
  are still run up to ``--base-max-len`` (default: every length on a GPU; on a CPU only up to
  8192, since a 64k full-attention prefill takes about half an hour on 2 cores) and otherwise
  reported as not run. A length that runs out of memory is reported as such.

One JSON summary (CoMeT and base side by side, by length) goes to stdout and
``<--eval-out>/smollm2_passkey.json``; it, both passkey heat-maps and the metrics
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
at each of 8k-64k), and the base runs the 8k haystack and window. Add depths (--eval-depths 0,0.5,1)
and the evaluation grows in proportion. This is a working demonstration of the pipeline on real weights,
not a converged model: 40 updates are unlikely to teach the memory to carry a key across 64k tokens.

``gpu``: 600 steps of batch 8, bf16-mixed, LR 5e-5 (5x for memory, the paper's ratio), 5 trials
at depths 0-1 in quarters and 4 perplexity windows per length; the base runs at every length.
"""

from __future__ import annotations

import argparse
import os
import sys

from framework.launch.config import DataConfig, JobConfig, LaunchConfig
from framework.launch.recipe_cli import main
from framework.methods.base_model import RANDOM_PREFIX, BaseModelConfig
from framework.methods.optim import OptimConfig
from framework.models.comet import CoMeTConfig
from framework.models.smollm2 import default_dir
from framework.tracking.store import TrackingConfig

TRAIN_LEN = 2048
DEFAULT_EVAL_LENGTHS = "8192,16384,32768,65536"
# evaluation defaults per preset: what a 2-core CPU can afford, and what a lent GPU can
EVAL_DEFAULTS = {
    "cpu": {"depths": "0.5", "trials": 1, "ppl_docs": 1},
    "gpu": {"depths": "0,0.25,0.5,0.75,1", "trials": 5, "ppl_docs": 4},
}


def cpu() -> JobConfig:
    return JobConfig(
        model=BaseModelConfig(base=default_dir()),  # tokenizer None: SmolLM2's own
        comet=CoMeTConfig(chunk_size=512, global_mem_size=64, temp_stride=8, temp_budget=128, adapter_rank=8,
                          gradient_checkpointing=True),
        method=OptimConfig(lr=1e-4, memory_lr_multiplier=10.0, warmup_steps=4, grad_clip=1.0, min_lr_ratio=0.1),
        data=DataConfig(kind="passkey", seq_len=TRAIN_LEN, batch_size=1, num_samples=10_000, epochs=1,
                        options={"digits": 5}),  # no filler: the shipped novels
        launch=LaunchConfig(run_name="comet_smollm2_passkey", max_steps=40, checkpoint_every_n_steps=20,
                            keep_checkpoints=1, cpus_per_worker=2),
        tracking=TrackingConfig(model_name="comet-smollm2-passkey"),
    )


def gpu() -> JobConfig:
    cfg = cpu()
    cfg.method = OptimConfig(lr=5e-5, memory_lr_multiplier=5.0, warmup_steps=20, grad_clip=1.0, min_lr_ratio=0.1)
    cfg.data.batch_size, cfg.data.num_samples = 8, 100_000
    cfg.launch.max_steps, cfg.launch.checkpoint_every_n_steps, cfg.launch.use_gpu = 600, 200, True
    cfg.launch.run_name, cfg.tracking.model_name = "comet_smollm2_passkey-gpu", "comet-smollm2-passkey-gpu"
    return cfg


PRESETS = {"cpu": cpu, "gpu": gpu}


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation after training")
    group.add_argument("--eval-lengths", default=DEFAULT_EVAL_LENGTHS,
                       help=f"haystack and perplexity lengths in tokens [{DEFAULT_EVAL_LENGTHS}]")
    group.add_argument("--eval-depths", default=None, help="key depths [cpu: 0.5; gpu: 0,0.25,0.5,0.75,1]")
    group.add_argument("--eval-trials", type=int, default=None, help="keys per (length, depth) cell [cpu 1, gpu 5]")
    group.add_argument("--eval-filler", default="repeat", help="passkey haystack: repeat | novels | @FILE [repeat]")
    group.add_argument("--ppl-docs", type=int, default=None, help="novel windows per length for perplexity [cpu 1, gpu 4]")
    group.add_argument("--base-max-len", type=int, default=None,
                       help="longest length the base model runs at [all lengths on a GPU; 8192 on a CPU]")
    group.add_argument("--no-base", action="store_true", help="evaluate the CoMeT model only")
    group.add_argument("--eval-out", default="outputs/eval/comet_smollm2", help="JSON summaries and heat-maps")
    group.add_argument("--no-eval", action="store_true", help="train and register only")


def check_base(cfg: JobConfig) -> None:
    """model.base must be a converted folder (or a random base); raises ValueError with the fix."""
    base = cfg.model.base
    if base.startswith(RANDOM_PREFIX) or os.path.isfile(os.path.join(base, "config.json")):
        return
    raise ValueError(f"the SmolLM2 folder {base} does not exist (or holds no config.json). Fix: run "
                     f"`bash cluster/setup_smollm2.sh{'' if base == default_dir() else ' ' + base}` once to install "
                     "and convert it, or point SMOLLM2_DIR (or --model.base) at a converted folder")


def _eval_settings(args) -> dict:
    from framework.eval.passkey import check_grid, parse_list

    defaults = EVAL_DEFAULTS.get(args.preset, EVAL_DEFAULTS["cpu"])
    lengths = parse_list(args.eval_lengths, int, "eval-lengths", "e.g. --eval-lengths 8192,65536")
    depths = parse_list(args.eval_depths or defaults["depths"], float, "eval-depths", "e.g. --eval-depths 0,0.5,1")
    trials = args.eval_trials if args.eval_trials is not None else defaults["trials"]
    docs = args.ppl_docs if args.ppl_docs is not None else defaults["ppl_docs"]
    check_grid(lengths, depths, trials)
    if docs < 1:
        raise ValueError(f"--ppl-docs {docs}: need at least 1 window. Fix: e.g. --ppl-docs 1")
    return {"lengths": lengths, "depths": depths, "trials": trials, "ppl_docs": docs}


def check_eval_flags(args, cfg: JobConfig) -> None:
    """A missing base folder or bad evaluation flags fail before training (ValueError: exit 2), not after it."""
    from framework.eval.passkey import resolve_filler

    check_base(cfg)
    _eval_settings(args)
    resolve_filler(args.eval_filler)


def _base_eval(cfg: JobConfig, settings: dict, filler, seed: int, max_len: int | None, out_dir: str, device) -> dict:
    """The base model with full attention at every length up to max_len; the rest marked, with the reason."""
    import torch
    from transformers import AutoModelForCausalLM

    from framework.eval.efficiency import is_oom
    from framework.eval.passkey import evaluate_passkey_full_attention, summarize, write_heatmap
    from framework.eval.perplexity import text_perplexity
    from framework.eval.reporting import progress, write_summary
    from framework.methods.base_model import load_tokenizer

    progress(f"loading the base model {cfg.model.base}")
    model = AutoModelForCausalLM.from_pretrained(cfg.model.base, attn_implementation="sdpa").to(device).eval()
    tokenizer = load_tokenizer(cfg.model)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if max_len is None:
        max_len = max(settings["lengths"]) if device.type == "cuda" else (limit or max(settings["lengths"]))
    cells, status, ppl = [], {}, {}
    for n in settings["lengths"]:
        if n > max_len:
            status[str(n)] = (f"not run: beyond --base-max-len {max_len}"
                              + (f" and the model's max_position_embeddings {limit}" if limit and n > limit else ""))
            continue
        try:
            cells += evaluate_passkey_full_attention(model, tokenizer, [n], settings["depths"], settings["trials"],
                                                     seed=seed, filler=filler, log=progress)
            ppl[str(n)] = text_perplexity(model, tokenizer, n, settings["ppl_docs"], full_attention=True,
                                          log=progress)["overall_ppl"]
            status[str(n)] = "ok" if not limit or n <= limit else f"ran beyond max_position_embeddings {limit}"
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            cells = [c for c in cells if c.length != n]
            status[str(n)] = "out of memory"
            progress(f"base model at {n} tokens: out of memory")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = {"model": cfg.model.base, "max_position_embeddings": limit, "max_len": max_len, "status": status,
               "perplexity": ppl}
    files = []
    if cells:
        summary["passkey"] = summarize(cells, 5)
        summary["passkey"]["heatmap"] = write_heatmap(summary["passkey"],
                                                      os.path.join(out_dir, "base", "passkey_heatmap.png"),
                                                      f"base model, full attention (trained to {limit})")
        files = [summary["passkey"]["heatmap"], write_summary(summary, os.path.join(out_dir, "base"), "passkey.json")]
    del model
    return {"summary": summary, "files": files}


def evaluate(args: argparse.Namespace, cfg: JobConfig, result) -> int:
    import mlflow
    import torch

    from framework.eval.model_uri import load_model
    from framework.eval.passkey import passkey_report, resolve_filler
    from framework.eval.perplexity import text_perplexity
    from framework.eval.reporting import log_to_active_run, print_summary, progress, write_summary

    if args.no_eval:
        return 0
    settings, filler = _eval_settings(args), resolve_filler(args.eval_filler)  # vetted by check_eval_flags
    seed, lengths = 1234, settings["lengths"]
    uri = result.pinned_model_uri
    loaded = load_model(uri, tracking_uri=result.tracking_uri)
    device = next(loaded.model.parameters()).device
    mlflow.set_tracking_uri(result.tracking_uri)
    with mlflow.start_run(run_id=result.run_id):
        comet_pk = passkey_report(loaded, lengths, settings["depths"], settings["trials"], seed=seed,
                                  out_dir=os.path.join(args.eval_out, "comet"), filler=filler, digits=5, batch_size=1,
                                  title=f"CoMeT on SmolLM2-135M, fine-tuned at {cfg.data.seq_len} tokens")
        comet_ppl = {str(n): text_perplexity(loaded.model, loaded.tokenizer, n, settings["ppl_docs"],
                                             log=progress)["overall_ppl"] for n in lengths}
        del loaded
        base = None if args.no_base else _base_eval(cfg, settings, filler, seed, args.base_max_len, args.eval_out,
                                                    device)
        base_summary = base["summary"] if base else None
        base_pk = (base_summary or {}).get("passkey", {})
        table = []
        for n in lengths:
            key = str(n)
            table.append({
                "length": n,
                "comet_passkey": comet_pk["accuracy"][key], "comet_ppl": comet_ppl[key],
                "base_passkey": base_pk.get("accuracy", {}).get(key), "base_ppl": (base_summary or {}).get(
                    "perplexity", {}).get(key),
                "base_status": (base_summary or {}).get("status", {}).get(key, "not run: --no-base"),
            })
        summary = {
            "model": uri, "base": cfg.model.base, "train_len": cfg.data.seq_len, "lengths": lengths,
            "depths": settings["depths"], "trials": settings["trials"], "ppl_docs": settings["ppl_docs"],
            "filler": args.eval_filler, "seed": seed, "table": table,
            "comet": {"passkey": comet_pk, "perplexity": comet_ppl},
            "base": base_summary,
        }
        path = write_summary(summary, args.eval_out, "smollm2_passkey.json")
        metrics = {f"eval/comet/ppl_{n}": v for n, v in comet_ppl.items() if v is not None}
        if base_summary:
            metrics.update({f"eval/base/ppl_{n}": v for n, v in base_summary["perplexity"].items() if v is not None})
            metrics.update({f"eval/base/passkey/acc_{n}": v for n, v in base_pk.get("accuracy", {}).items()})
        log_to_active_run(metrics, [path] + (base["files"] if base else []), "eval/smollm2")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(PRESETS, default="cpu", description=__doc__, add_flags=add_eval_flags,
                  check=check_eval_flags, after=evaluate))
