"""``longctx data prepare``, ``longctx data inspect`` and ``longctx data verify``.

    longctx data prepare SOURCE... --out DIR [--tokenizer NAME_OR_PATH] [--field text]
                                   [--on-bad-record fail|skip] [--format auto|jsonl|parquet|text]
                                   [--chat] [--shard-tokens N] [--overwrite] [--no-progress]
    longctx data inspect DIR [--json] [--samples 3] [--seq-len 256]
    longctx data verify --store URI      exit 0: every file's sha256 matches the manifest; 1: one does not

Also runnable as ``python -m data_pipelines.cli ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from data_pipelines.errors import BadRecordError, DataConfigError


def add_data_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register ``data`` (with ``prepare`` and ``inspect``) on an argparse subparsers object."""
    data = subparsers.add_parser("data", help="prepare and inspect token stores",
                                 description="Prepare token stores from raw text, and inspect them.")
    sub = data.add_subparsers(dest="data_command")
    p = sub.add_parser("prepare", help="tokenize sources into a token store",
                       description="Tokenize SOURCE files (local paths or fsspec URIs: s3://, gs://, memory://, "
                                   "http(s)://; globs and folders too) into a token store at --out.")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", required=True, metavar="DIR", help="store folder or URI")
    p.add_argument("--tokenizer", default="project", metavar="NAME_OR_PATH",
                   help="Hugging Face tokenizer name or folder; 'project' (default) is the shipped one")
    p.add_argument("--field", default=None, help="record field with the text (default: text; messages with --chat)")
    p.add_argument("--on-bad-record", choices=("fail", "skip"), default="fail",
                   help="fail: stop at the first bad record (default); skip: skip and count per reason in the manifest")
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "parquet", "text"),
                   help="input format (default: from the file name)")
    p.add_argument("--chat", action="store_true", help="records are conversations; labels only on assistant turns")
    p.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard file (default 2**28)")
    p.add_argument("--no-eos", action="store_true", help="do not append <eos> to every document")
    p.add_argument("--overwrite", action="store_true", help="rebuild a store that was built from other inputs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_prepare)
    i = sub.add_parser("inspect", help="show a token store's manifest, counts and sample windows")
    i.add_argument("store", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--samples", type=int, default=3, help="sample windows to decode (default 3)")
    i.add_argument("--seq-len", type=int, default=256, help="tokens per sample window (default 256)")
    i.set_defaults(func=cmd_inspect)
    v = sub.add_parser("verify", help="recompute every shard's sha256 and compare it with the manifest",
                       description="Recompute the sha256 of a token store's index and shards and compare each with "
                                   "the manifest. Prints every bad file by name; exits 1 when any is bad.")
    v.add_argument("--store", required=True, metavar="URI", help="store folder or URI (s3://, gs://, memory://, ...)")
    v.set_defaults(func=cmd_verify)
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])
    return data


def cmd_prepare(args: argparse.Namespace) -> int:
    from data_pipelines.prepare import DEFAULT_SHARD_TOKENS, prepare

    if args.shard_tokens is not None and args.shard_tokens < 1024:
        print(f"error: --shard-tokens {args.shard_tokens}: a shard file must hold at least 1024 tokens. Fix: drop "
              f"the flag (default {DEFAULT_SHARD_TOKENS} = 2**28) or pass e.g. --shard-tokens 1048576", file=sys.stderr)
        return 2
    try:
        result = prepare(
            args.sources, args.out, args.tokenizer,
            field=args.field or ("messages" if args.chat else "text"), format=args.format, chat=args.chat,
            on_bad_record=args.on_bad_record, append_eos=not args.no_eos,
            shard_tokens=DEFAULT_SHARD_TOKENS if args.shard_tokens is None else args.shard_tokens,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (DataConfigError, BadRecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = result.manifest
    verb = {"built": "built", "resumed": "resumed and finished", "up_to_date": "is up to date (nothing to do):"}[result.status]
    print(f"token store {result.out} {verb} {m['num_documents']:,} documents, {m['num_tokens']:,} tokens "
          f"in {len(m['shards'])} shard(s)")
    if m["skipped"]:
        print("skipped records: " + ", ".join(f"{k}={v}" for k, v in sorted(m["skipped"].items())) +
              " (details per source in manifest.json)")
    return 0


def describe(store_path: str, samples: int = 3, seq_len: int = 256) -> dict:
    """A summary of a store: manifest figures, counts and decoded sample windows."""
    import numpy as np

    from data_pipelines.store import TokenStore
    from data_pipelines.tokenizer import load_tokenizer

    store = TokenStore(store_path)
    m = store.manifest
    lengths = store.index[:, 1] if store.num_documents else np.zeros(1, np.int64)
    summary = {
        "path": store_path,
        "tokenizer": m["tokenizer"],
        "params": m["params"],
        "documents": m["num_documents"],
        "tokens": m["num_tokens"],
        "records": m["records"],
        "shards": len(m["shards"]),
        "document_tokens": {"min": int(lengths.min()), "median": int(np.median(lengths)), "max": int(lengths.max())},
        "skipped": m["skipped"],
        "sources": [{k: s[k] for k in ("uri", "sha256", "records", "documents", "tokens", "skipped")} for s in m["sources"]],
        "samples": [],
    }
    if samples > 0 and store.num_tokens:
        try:
            tok = load_tokenizer(m["tokenizer"]["name_or_path"] or None)
        except Exception:  # noqa: BLE001 - decoding is a nicety; the figures stand without it
            tok = None
        window = max(1, min(seq_len, store.num_tokens))
        count = store.num_tokens // window
        for k in np.linspace(0, count - 1, num=min(samples, count)).astype(int).tolist():
            ids = store.tokens(k * window, window)
            summary["samples"].append({"window": k, "start_token": k * window,
                                       "text": tok.decode(ids.tolist()) if tok is not None else ids[:64].tolist()})
    return summary


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        summary = describe(args.store, args.samples, args.seq_len)
    except DataConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    t = summary["tokenizer"]
    print(f"token store {summary['path']}")
    print(f"  tokenizer   {t['name_or_path']} ({t['class']}, vocab {t['vocab_size']}, sha256 {t['fingerprint'][:12]})")
    print(f"  documents   {summary['documents']:,}  tokens {summary['tokens']:,}  records {summary['records']:,}  "
          f"shards {summary['shards']}")
    d = summary["document_tokens"]
    print(f"  doc tokens  min {d['min']:,}  median {d['median']:,}  max {d['max']:,}")
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(summary["skipped"].items())) or "none"
    print(f"  skipped     {skipped}")
    for s in summary["sources"]:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(s["skipped"].items()))
        print(f"  source      {s['uri']}: {s['documents']:,} docs, {s['tokens']:,} tokens"
              + (f", skipped {extra}" if extra else "") + f", sha256 {str(s['sha256'])[:12]}")
    for sample in summary["samples"]:
        text = sample["text"] if isinstance(sample["text"], str) else str(sample["text"])
        print(f"--- window {sample['window']} (tokens {sample['start_token']:,}+) ---")
        print(text[:1200])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from data_pipelines.store_integrity import verify_store

    try:
        report = verify_store(args.store)
    except DataConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"token store {report.path}: {len(report.checked)} file(s) checked against the manifest's sha256")
    for name in report.checked:
        print(f"  {'BAD' if name in report.bad else 'ok ':3}  {name}" + (f": {report.bad[name]}" if name in report.bad else ""))
    if "manifest" in report.bad:
        print(f"  BAD  manifest: {report.bad['manifest']}")
    if report.ok:
        print("all files match")
        return 0
    print(f"{len(report.bad)} bad file(s): the store is damaged and must not be trained on. Fix: delete {report.path} "
          "and run the same `longctx data prepare` again.", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longctx")
    add_data_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
