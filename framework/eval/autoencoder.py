"""``longctx eval autoencoder``: greedy reconstruction of texts by a context autoencoder, scored per
text with token F1, BLEU and ROUGE-L next to the entropy its encoder and its frozen decoder measure,
and the Spearman correlation of each entropy with F1.

    longctx eval autoencoder --model models:/ae-study-tiny-ae-austen-austen@champion \\
        --data '{"kind": "text", "seq_len": 32, "split": "validation"}' --num-samples 64

The summary (means, correlations) is the one JSON line on stdout and ``<out>/autoencoder.json``;
the per-text records are in ``<out>/autoencoder_records.json``. With an active MLflow run (or
``MLFLOW_RUN_ID``) the means are logged as ``val/f1``, ``val/bleu`` and ``val/rouge_l``.
"""

from __future__ import annotations

import argparse
import json
import os

DEFAULT_OUT = "outputs/eval/autoencoder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="an autoencoder: a save_pretrained directory, models:/<name>@<alias> or runs:/<run_id>")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="a data_pipelines spec as JSON, e.g. '{\"kind\": \"text\", \"seq_len\": 32, "
                             "\"split\": \"validation\"}'")
    parser.add_argument("--num-samples", type=int, default=64, help="texts to reconstruct (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts decoded side by side (default 16)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from data_pipelines import build_source
    from framework.eval.autoencoder_eval import entropy_correlations, evaluate
    from framework.eval.model_uri import ModelURIError, resolve_model_dir
    from framework.eval.reporting import log_to_active_run, print_summary, progress, write_summary
    from framework.models.compression.autoencoder import ENCODER_DIR, ContextAutoencoder
    from framework.models.loading import is_autoencoder_dir

    if args.num_samples < 3 or args.batch_size < 1:
        raise ValueError(f"--num-samples {args.num_samples} and --batch-size {args.batch_size}: a correlation needs "
                         "at least 3 texts and a batch at least 1. Fix: e.g. --num-samples 64 --batch-size 16")
    try:
        spec = json.loads(args.data)
    except json.JSONDecodeError as err:
        raise ValueError(f"--data {args.data!r} is not JSON ({err}). Fix: e.g. '{{\"kind\": \"text\", "
                         "\"seq_len\": 32}'") from None
    directory = resolve_model_dir(args.model, args.tracking_uri)
    if not is_autoencoder_dir(directory):
        raise ModelURIError(f"--model {args.model} is not a context autoencoder (no autoencoder_config.json). "
                            "Fix: pass a model that recipes/ae_study.py registered (models:/<name>-ae-...@champion)")
    progress(f"loading {args.model}")
    model = ContextAutoencoder.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(directory, ENCODER_DIR))
    source = build_source(spec, tokenizer)
    n = min(args.num_samples, len(source))
    progress(f"reconstructing {n} texts")
    report = evaluate(model, [source[i]["input_ids"] for i in range(n)], args.batch_size)
    summary = {"model": args.model, "data": spec, "num_samples": n, "means": report["means"],
               "correlations": entropy_correlations(report["records"])}
    write_summary(summary, args.out, "autoencoder.json")
    records = write_summary({"records": report["records"]}, args.out, "autoencoder_records.json")
    log_to_active_run({f"val/{k}": report["means"][k] for k in ("f1", "bleu", "rouge_l")},
                      [records], "eval/autoencoder")
    print_summary(summary)
    return 0
