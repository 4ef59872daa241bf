"""``longctx compress``: PoC's performance-oriented compression of every context of a JSONL file.

    longctx compress --model models:/poc-predictor-tiny@champion --floor 0.9 inputs.jsonl
    cat inputs.jsonl | longctx compress --model poc-dir --floor 0.8 - --out memories.safetensors

--model: a PoC predictor that recipes/poc_predictor.py registered (models:/<name>@<alias>,
models:/<name>/<version>, runs:/<id>) or its directory; it carries its compressor. INPUT: JSON Lines
of {"context": ..., "question"?: ...} (the official {"input", "prompt"} names work too), or '-'
for stdin. For each line the predictor's retention curve is searched (two stages of 18 ratios) for
the smallest ratio r = |compressed| / |original| whose predicted retention is >= --floor; the
compressor then compresses the context at that ratio and, when a question is given, answers it.

stdout: one JSON line per input {"line", "ratio", "predicted_retention", "factor", "context_tokens",
"memory_slots", "answer"?}. --out FILE: the compressed memories as safetensors (memory_<line>,
[slots, hidden] float32, with the ratios in the metadata).
"""

from __future__ import annotations

import argparse
import json
import sys


class CompressArgumentError(ValueError):
    """A `longctx compress` option or input line is invalid; the message names it and the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="a PoC predictor: models:/<name>@<alias>, runs:/<id> or its directory")
    parser.add_argument("--floor", type=float, required=True,
                        help="the retention to keep, in [0, 1] (the share of the uncompressed score)")
    parser.add_argument("input", metavar="INPUT", help="JSON Lines of {context, question?}, or - for stdin")
    parser.add_argument("--out", default=None, help="write the compressed memories here (safetensors)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="longest answer decoded (default 16)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")


def read_inputs(path: str) -> list[tuple[int, str, str | None]]:
    """(line number, context, question or None) of every non-empty line."""
    import os

    from data_pipelines.errors import DataConfigError
    from data_pipelines.sources import LongLine, iter_lines

    if path != "-" and not os.path.isfile(path):
        raise CompressArgumentError(f"INPUT {path!r}: no such file. Fix: pass a JSON Lines file of "
                                    "{\"context\": ..., \"question\": ...}, or - to read stdin")
    # bytes, line by line: binary input and a huge line become errors that name the line, never a traceback
    fh = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        raw_lines = list(iter_lines(fh))
    except DataConfigError as err:
        raise CompressArgumentError(str(err)) from None
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
    rows = []
    for number, raw in enumerate(raw_lines, 1):
        if isinstance(raw, LongLine):
            raise CompressArgumentError(f"{path}: line {number}: {raw.detail}")
        if b"\0" in raw:
            raise CompressArgumentError(f"{path}: line {number} holds binary data (NUL bytes), not JSON text. "
                                        "Fix: INPUT must be JSON Lines text, one {\"context\": ...} object per line")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CompressArgumentError(f"{path}: line {number} is not UTF-8 text (byte {err.start + 1}: "
                                        f"{err.reason}); is it a binary file? Fix: INPUT must be JSON Lines text "
                                        "in UTF-8, one {\"context\": ...} object per line") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CompressArgumentError(f"{path}: line {number} is not JSON ({err.msg} at column {err.colno}). "
                                        "Fix: one JSON object per line") from None
        context = record.get("context", record.get("input")) if isinstance(record, dict) else None
        question = record.get("question", record.get("prompt")) if isinstance(record, dict) else None
        if not isinstance(context, str) or not context.strip():
            raise CompressArgumentError(f"{path}: line {number} has no non-empty \"context\" (or \"input\") string. "
                                        "Fix: {\"context\": \"...\", \"question\": \"...\"}")
        if question is not None and not isinstance(question, str):
            raise CompressArgumentError(f"{path}: line {number}: \"question\" must be a string. Fix: quote it")
        rows.append((number, context, question or None))
    if not rows:
        raise CompressArgumentError(f"INPUT {path!r} holds no lines. Fix: one JSON object per context")
    return rows


def add_compress_subcommand(sub) -> None:
    """``longctx compress``: PoC's per-context ratio and compression."""
    parser = sub.add_parser("compress", help="compress each context at the smallest ratio a PoC predictor expects "
                                             "to keep the floor", description=__doc__.strip(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    """`run`, with bad input as status 2 and one line naming the cause and the fix (as `longctx eval` does)."""
    from data_pipelines.errors import DataConfigError
    from framework.eval.model_uri import ModelURIError
    from framework.tracking.store import TrackingError

    try:
        return run(args)
    except (ModelURIError, DataConfigError, TrackingError, ValueError) as err:
        from framework.tracking.redact import redact_text

        print(f"longctx: error: {redact_text(str(err))}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from framework.eval.model_uri import ModelURIError, resolve_model_dir
    from framework.models.compression.poc_pipeline import PoCPipeline, is_poc_dir

    if not 0.0 <= args.floor <= 1.0:
        raise CompressArgumentError(f"--floor {args.floor}: outside [0, 1]; it is the share of the uncompressed "
                                    "score to keep. Fix: e.g. --floor 0.9")
    if args.max_new_tokens < 1:
        raise CompressArgumentError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1. Fix: e.g. 16")
    rows = read_inputs(args.input)
    directory = resolve_model_dir(args.model, args.tracking_uri)
    if not is_poc_dir(directory):
        raise ModelURIError(f"--model {args.model} is not a PoC predictor (no poc_predictor.json). Fix: pass a model "
                            "that recipes/poc_predictor.py registered; answer from a RAM/COMI compressor at a fixed "
                            "ratio with `longctx eval qa`")
    import torch

    pipe = PoCPipeline.from_pretrained(directory)
    memories, ratios = {}, {}
    with torch.no_grad():  # scoped: the CLI also runs in-process (tests, notebooks)
        for number, context, question in rows:
            got = pipe.run(context, args.floor, question, args.max_new_tokens)
            memories[f"memory_{number}"] = got.pop("memory").contiguous()
            ratios[str(number)] = got["ratio"]
            print(json.dumps({"line": number, **got}), flush=True)
    if args.out:
        from safetensors.torch import save_file

        save_file(memories, args.out, metadata={"format": "pt", "floor": str(args.floor), "model": args.model,
                                                "ratios": json.dumps(ratios)})
        print(f"[longctx] wrote {len(memories)} compressed memories to {args.out}", file=sys.stderr)
    return 0
