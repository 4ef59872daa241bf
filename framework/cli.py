"""The ``longctx`` command line.

    longctx version   print the longctx version
    longctx info      print versions of the main dependencies
    longctx data      prepare, inspect and verify token stores
    longctx eval      passkey retrieval and perplexity of a model
    longctx bench     efficiency curves against full and sliding-window attention
    longctx compress  PoC: compress each context at the smallest ratio predicted to keep a floor
    longctx merge     merge fine-tunes of one base (task arithmetic, TIES, DARE, NAN, Hi-Merging)
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from typing import Sequence

from framework import __version__

_INFO_PACKAGES = ("torch", "transformers", "lightning", "ray", "mlflow")


def _package_version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report any import failure, never crash
        return f"not available ({type(exc).__name__}: {exc})"
    return str(getattr(module, "__version__", "unknown"))


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"longctx {__version__}")
    return 0


def _cmd_info(_: argparse.Namespace) -> int:
    print(f"longctx {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    for name in _INFO_PACKAGES:
        print(f"{name} {_package_version(name)}")
    try:
        import torch

        cuda = torch.cuda.is_available()
        print(f"cuda available: {cuda}" + (f" ({torch.cuda.device_count()} device(s))" if cuda else ""))
    except Exception:  # noqa: BLE001
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longctx", description="longctx command line")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("version", help="print the longctx version").set_defaults(func=_cmd_version)
    sub.add_parser("info", help="print versions of the main dependencies").set_defaults(func=_cmd_info)
    from data_pipelines.cli import add_data_subcommand

    add_data_subcommand(sub)
    from framework.eval.cli import add_eval_subcommands

    add_eval_subcommands(sub)
    from framework.compress import add_compress_subcommand

    add_compress_subcommand(sub)
    from framework.merge_cli import add_merge_subcommand

    add_merge_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
