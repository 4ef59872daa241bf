"""Context compression for QA at small scale: RAM, COMI and mean pooling against truncation, from one reader.

    python benchmarks/compression_qa.py              # the default run (about 30 min on a shared 2-core CPU)
    python benchmarks/compression_qa.py --quick      # a few steps of everything (seconds; for tests)
    python benchmarks/compression_qa.py --reader-steps 100 --steps 30 --eval-samples 32 --out outputs/c.json
    python benchmarks/compression_qa.py --save-dir outputs/cqa       # also save the reader and compressors
    python benchmarks/compression_qa.py --reader-from outputs/cqa/reader --models comi --steps 1200
                                                     # new compressors on a saved reader (stage 0 skipped)
    python benchmarks/compression_qa.py --save-dir outputs/cqa --resume auto
                                                     # continue the newest run: its finished stages are kept

Prints one JSON object, writes it to ``--out`` (default ``benchmarks/results/compression_qa.json``) and
plots exact match against compression ratio to ``--plot`` (default ``docs/img/compression_qa.png``).

A driver: the stages (the reader, the compressors with their ratio curriculum and autoencoding stage, the
evaluation, the claims and the training record) are ``framework.studies.compression_qa``, whose docstring
describes what is measured; every flag is a field of its ``CompressionQAStudy`` (``--quick``: its ``QUICK``
preset's sizes; ``--tracking-uri`` and ``--experiment``: its ``tracking``). The run is an MLflow parent run
(``compression_qa``) with a child run per stage; the progress lines go to stderr, the JSON alone to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from framework.studies.compression_qa import (  # noqa: E402, F401  (re-exported for tests and notebooks)
    EVAL_SEED, FULL, LABELS, MODELS, QUICK_SIZES, TRAIN_ARGS, TRAINING_RECORD, CompressionQAStudy,
    claims, curriculum_phase, evaluate, make_batch, make_plot, method_settings,
    multi_query_loss, phase_seq_len, reader_exact_match, run, setting_row, state_hash, summarize_curve, tensors,
    truncation_budget)
from framework.job import TrackingConfig  # noqa: E402


def _ints(s: str) -> list:
    return [int(x) for x in s.split(",") if x]


def parse_args(argv=None):
    d = FULL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=d.hidden, help="width of the tiny Qwen3 (2 layers, 4 heads)")
    p.add_argument("--reader-seq-len", type=int, default=d.reader_seq_len,
                   help="context tokens of stage 0's last phase (the reader)")
    p.add_argument("--reader-curriculum", type=_ints, default=list(d.reader_curriculum),
                   help="shorter context lengths that the reader trains on first, an equal share of the steps each")
    p.add_argument("--digits", type=int, default=d.digits, help="digits of each fact's value (the answer)")
    p.add_argument("--reader-steps", type=int, default=d.reader_steps)
    p.add_argument("--reader-queries", type=int, default=d.reader_queries,
                   help="questions per context in the reader's training (the asked fact first, then others)")
    p.add_argument("--reader-lr", type=float, default=d.reader_lr)
    p.add_argument("--reader-warmup", type=int, default=d.reader_warmup)
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="context tokens of stage 1 and of the evaluation")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps of each compressor")
    p.add_argument("--batch", type=int, default=d.batch, help="samples per training step (both stages)")
    p.add_argument("--lr", type=float, default=d.lr, help="compressor learning rate")
    p.add_argument("--warmup", type=int, default=None, help="compressor warmup steps (default: 10%% of --steps)")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help="the cosine ends at this fraction of the lr")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--ratio", type=int, default=d.ratio, help="compression ratio the compressors train at")
    p.add_argument("--ratio-curriculum", type=_ints, default=list(d.ratio_curriculum),
                   help="lower ratios that the compressors train at first, an equal share of the steps each, on "
                        "contexts of --seq-len * r / --ratio tokens, so the memory always has about "
                        "--seq-len / --ratio slots (e.g. 1,2,4: the decoder first reads unmerged encoder states)")
    p.add_argument("--autoencode-steps", type=int, default=d.autoencode_steps,
                   help="COMI and mean pooling first learn to rebuild the context from its memory (the "
                        "GMSA/ICAE autoencoding stage COMI's released code can start from) for N steps, on "
                        "the same contexts and ratio phases as the QA training; 0: skip")
    p.add_argument("--ratios", type=int, nargs="+", default=list(d.ratios),
                   help="evaluation ratios (must hold --ratio)")
    p.add_argument("--segment-size", type=int, default=d.segment_size, help="RAM's segment length")
    p.add_argument("--encoder-layers", type=int, default=d.encoder_layers)
    p.add_argument("--merge-alpha", type=float, default=d.merge_alpha,
                   help="COMI's fine-step relevance weight alpha_m (default: alpha, 1.0); mean pooling has none")
    p.add_argument("--models", nargs="+", default=list(d.models), choices=MODELS)
    p.add_argument("--eval-samples", type=int, default=d.eval_samples)
    p.add_argument("--eval-batch", type=int, default=d.eval_batch)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="longest greedy answer (the gold is 6-7 tokens)")
    p.add_argument("--seed", type=int, default=d.seed, help="model seed and reader data seed (compressors: seed + 1)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    p.add_argument("--log-every", type=int, default=d.log_every,
                   help="progress line on stderr every N steps (0: never)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK_SIZES.items()))
    p.add_argument("--save-dir", default=None,
                   help="save the reader and every compressor (CompressorForQA.save_pretrained) under DIR/<name>")
    p.add_argument("--reader-from", default=None,
                   help="a reader saved by --save-dir (DIR/reader): skip stage 0 and start the compressors from it")
    p.add_argument("--compressors-from", default=None,
                   help="a --save-dir of an earlier run: load DIR/<name> for each of --models instead of training "
                        "it (with --reader-from, the evaluation of compressors trained in separate runs)")
    p.add_argument("--accelerator", default=d.accelerator, help="the Trainer's accelerator for the training stages")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store of the run (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", default=d.tracking.experiment, help="MLflow experiment")
    p.add_argument("--resume", default=None,
                   help="runs:/<parent run id> or auto (the newest compression_qa run): the stages that finished "
                        "there are not run again (their weights are loaded from where they saved them; needs "
                        "--save-dir)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "compression_qa.json"))
    p.add_argument("--plot", default=str(REPO / "docs" / "img" / "compression_qa.png"))
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK_SIZES.items():
            setattr(args, k, v)
        args.log_every = 0
    study = study_of(args)
    try:
        study.check()
    except ValueError as err:
        p.error(str(err))
    # warmup resolved, ratios sorted (the tracking settings stay the flags they came from)
    vars(args).update({k: v for k, v in dataclasses.asdict(study).items() if k != "tracking"})
    return args


def study_of(args) -> CompressionQAStudy:
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(CompressionQAStudy) if f.name != "tracking"}
    return CompressionQAStudy(**fields, tracking=TrackingConfig(tracking_uri=args.tracking_uri,
                                                                experiment=args.experiment))


def main(argv=None) -> dict:
    args = parse_args(argv)
    from framework.tracking.checkpoints import CheckpointError
    from framework.tracking.store import TrackingError

    try:
        with contextlib.redirect_stdout(sys.stderr):  # the stages' MLflow lines; stdout is the JSON's
            result = run(study_of(args))
    except (CheckpointError, TrackingError) as err:  # a bad --resume or store: the cause and the fix, no traceback
        raise SystemExit(f"error: {err}") from None
    plot = Path(make_plot(result, args.plot)).resolve()
    result["plot"] = str(plot.relative_to(REPO)) if plot.is_relative_to(REPO) else str(plot)
    text = json.dumps(result, indent=2)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
