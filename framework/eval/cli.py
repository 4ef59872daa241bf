"""``longctx eval passkey|perplexity|qa|autoencoder|harness`` and ``longctx bench efficiency``.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Bad input exits
with status 2 and one line naming the cause and the fix; progress goes to stderr, the JSON
summary to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_EVAL = {"passkey": "passkey retrieval accuracy by context length and depth, with a heat-map",
         "perplexity": "perplexity by position bucket on long documents",
         "qa": "exact match and F1 of a compressor against the full prompt and truncation, by compression ratio",
         "autoencoder": "reconstruction F1/BLEU/ROUGE-L of a context autoencoder, with the entropies it measures",
         "longqa": "long-context QA (BABILong-style bAbI, needles, any JSONL) against the base at full context "
                   "and with a sliding window",
         "harness": "EleutherAI lm-evaluation-harness, offline: RULER tasks by length, perplexity on a local text"}
_BENCH = {"efficiency": "prefill time, decode ms/token and peak memory against context length"}


def _runner(module_name: str):
    def run(args: argparse.Namespace) -> int:
        from data_pipelines.errors import DataConfigError
        from framework.eval.model_uri import ModelURIError
        from framework.tracking.store import TrackingError

        module = importlib.import_module(f"framework.eval.{module_name}")
        try:
            return module.run(args)
        except (ModelURIError, DataConfigError, TrackingError, ValueError) as err:
            from framework.tracking.redact import redact_text

            print(f"longctx: error: {redact_text(str(err))}", file=sys.stderr)
            return 2

    return run


def _add_group(sub, name: str, title: str, commands: dict) -> None:
    group = sub.add_parser(name, help=title).add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    for command, help_text in commands.items():
        module = importlib.import_module(f"framework.eval.{command}")
        parser = group.add_parser(command, help=help_text, description=(module.__doc__ or help_text).strip(),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=_runner(command))


def add_eval_subcommands(sub) -> None:
    _add_group(sub, "eval", "evaluate a long-context model", _EVAL)
    _add_group(sub, "bench", "measure a model's efficiency", _BENCH)
