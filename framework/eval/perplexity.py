"""Perplexity of a CoMeT model by token position on long documents.

Each document (a window of --seq-len tokens) is streamed through ``model.stream()`` one chunk
at a time, so memory stays constant however long the document is: logits exist for one chunk
only, and each chunk's per-token negative log-likelihoods are added to the position bucket of
the token they predict. A token's position is its index in the document (1 .. seq_len-1; the
first token is never predicted), so with every label kept the buckets hold
num_docs * (seq_len - 1) tokens between them.

Documents come from either
  --text PATH   plain text (.txt), or JSON Lines (.jsonl, .jsonl.gz, ...) with a "text" field; local
                paths and fsspec URIs. Every record is one document, tokenized whole and cut into
                consecutive non-overlapping windows of --seq-len tokens (a shorter rest is dropped;
                windows never cross records). Default: the Jane Austen novels shipped with the project.
  --data SPEC   a data_pipelines spec as JSON, e.g. '{"kind": "store_windows", "path": "/data/tokens",
                "seq_len": 16384}'. Its first --num-docs samples are used, scoring the positions
                whose label is not -100. A packed window is streamed as one sequence.

--buckets is a count of equal buckets over [0, seq_len) ("8") or their edges ("0,1024,4096,16384";
0 and seq_len are added when missing).

stdout: {"model", "seq_len", "num_docs", "tokens", "overall_nll", "overall_ppl",
         "buckets": [{"start", "end", "tokens", "nll", "ppl"}, ...], "data", "files", ...}
--out gets perplexity.json and perplexity.png; with an active MLflow run, metrics
eval/perplexity/overall_ppl and eval/perplexity/pos_<start>_<end>/ppl and both files are logged.
"""

from __future__ import annotations

import argparse
import json
import math
import os

DEFAULT_SEQ_LEN = 16384
DEFAULT_OUT = os.path.join("outputs", "eval", "perplexity")
IGNORE_INDEX = -100


class PerplexityArgumentError(ValueError):
    """A perplexity option is invalid; the message names it and the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="CoMeT model: a save_pretrained directory, models:/<name>@<alias> or runs:/<run_id>")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="PATH", default=None,
                        help=".txt or .jsonl[.gz] file with a 'text' field (default: the shipped Austen novels)")
    source.add_argument("--data", metavar="SPEC", default=None,
                        help="a data_pipelines spec as JSON, e.g. '{\"kind\": \"store_windows\", \"path\": ..., "
                             "\"seq_len\": 16384}'")
    parser.add_argument("--seq-len", type=int, default=None,
                        help=f"document length in tokens (default {DEFAULT_SEQ_LEN}, or the --data spec's seq_len)")
    parser.add_argument("--num-docs", type=int, default=8, help="documents to evaluate (default 8)")
    parser.add_argument("--buckets", default="8",
                        help="number of equal position buckets, or comma-separated edges (default 8)")
    parser.add_argument("--batch-size", type=int, default=1, help="documents streamed side by side (default 1)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")


# ---------------------------------------------------------------------------------------- options
def parse_buckets(text: str, seq_len: int) -> list[int]:
    """Bucket edges [0, ..., seq_len] from a count ("8") or a comma-separated list of edges."""
    raw = str(text).strip()
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise PerplexityArgumentError(f"--buckets {text!r}: not an integer or a comma-separated list of integers. "
                                      "Fix: pass e.g. --buckets 8 or --buckets 0,1024,4096,16384") from None
    if not values:
        raise PerplexityArgumentError("--buckets is empty. Fix: pass e.g. --buckets 8")
    if len(values) == 1 and "," not in raw:
        count = values[0]
        if not 1 <= count <= seq_len - 1:
            raise PerplexityArgumentError(f"--buckets {count}: need between 1 and seq_len-1={seq_len - 1} buckets. "
                                          "Fix: pass e.g. --buckets 8")
        edges = sorted({round(i * seq_len / count) for i in range(count + 1)})
        return edges
    if values[0] != 0:
        values = [0] + values
    if values[-1] != seq_len:
        values = values + [seq_len]
    if any(b <= a for a, b in zip(values, values[1:])) or values[-1] > seq_len:
        raise PerplexityArgumentError(f"--buckets {text!r}: edges must increase strictly and lie within "
                                      f"[0, seq_len={seq_len}]. Fix: pass e.g. --buckets 0,{seq_len // 2},{seq_len}")
    return values


def _check_counts(args) -> None:
    for flag, value in (("--num-docs", args.num_docs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise PerplexityArgumentError(f"{flag} {value}: must be at least 1. Fix: pass e.g. {flag} 1")
    if args.seq_len is not None and args.seq_len < 2:
        raise PerplexityArgumentError(f"--seq-len {args.seq_len}: a document needs at least 2 tokens. "
                                      "Fix: pass e.g. --seq-len 16384")


def _data_spec(args) -> dict:
    from data_pipelines.factory import validate_spec

    try:
        spec = json.loads(args.data)
    except json.JSONDecodeError as err:
        raise PerplexityArgumentError(f"--data is not valid JSON ({err}). Fix: quote it for the shell, e.g. "
                                      "--data '{\"kind\": \"store_windows\", \"path\": \"/data/tokens\", "
                                      "\"seq_len\": 16384}'") from None
    if not isinstance(spec, dict):
        raise PerplexityArgumentError("--data must be a JSON object with a 'kind' key, e.g. "
                                      "'{\"kind\": \"store_windows\", \"path\": \"/data/tokens\", \"seq_len\": 16384}'")
    if "seq_len" not in spec:
        spec["seq_len"] = args.seq_len or DEFAULT_SEQ_LEN
    elif args.seq_len is not None and args.seq_len != spec["seq_len"]:
        raise PerplexityArgumentError(f"--seq-len {args.seq_len} disagrees with the --data spec's seq_len="
                                      f"{spec['seq_len']}. Fix: drop --seq-len, or set seq_len in the spec only")
    return validate_spec(spec)


# ---------------------------------------------------------------------------------------- documents
def text_documents(path: str, tokenizer, seq_len: int, num_docs: int):
    """Up to num_docs windows of seq_len tokens (as lists of ids) cut from the records of `path`, and stats."""
    from data_pipelines.errors import DataConfigError
    from data_pipelines.sources import Bad, expand_sources, read_source

    try:
        sources = expand_sources(path)
    except DataConfigError as err:
        raise DataConfigError(f"--text {path}: {err} Fix: pass an existing .txt or .jsonl[.gz] file, or drop "
                              "--text to use the shipped novels") from None
    if any(src.format not in ("text", "jsonl") for src in sources):
        raise PerplexityArgumentError(f"--text {path}: only plain text (.txt) and JSON Lines (.jsonl, .jsonl.gz) are "
                                      "read here. Fix: convert the file, or tokenize it into a store and use --data")
    windows, stats = [], {"records": 0, "short_records": 0, "bad_records": 0}
    for src in sources:
        ids: list[int] = []  # the current record's tokens not yet cut into windows
        cut = 0  # windows cut from the current record
        for event in read_source(src, field="text"):
            if isinstance(event, Bad):
                stats["bad_records"] += 1
                windows = windows[:len(windows) - cut] if event.rollback else windows
                ids, cut = [], 0
                continue
            ids.extend(tokenizer(event.text, add_special_tokens=False)["input_ids"])
            while len(ids) >= seq_len:  # pieces tokenize like the whole record, so cut as they come
                windows.append(ids[:seq_len])
                ids, cut = ids[seq_len:], cut + 1
                if len(windows) == num_docs and not event.last:
                    return windows, stats
            if event.last:
                stats["records"] += 1
                stats["short_records"] += int(cut == 0)
                if len(windows) >= num_docs:
                    return windows[:num_docs], stats
                ids, cut = [], 0
    raise PerplexityArgumentError(
        f"--text {path}: only {len(windows)} window(s) of --seq-len {seq_len} tokens in {stats['records']} record(s) "
        f"({stats['short_records']} shorter than that), but --num-docs {num_docs} asked. "
        "Fix: lower --num-docs or --seq-len, or give more text")


def data_documents(spec: dict, tokenizer, num_docs: int):
    """The first num_docs samples of a data_pipelines source: lists of (input_ids, labels) tensors."""
    from data_pipelines.factory import build_source

    source = build_source(spec, tokenizer)
    if len(source) < num_docs:
        raise PerplexityArgumentError(f"--data has {len(source)} sample(s), but --num-docs {num_docs} asked. "
                                      "Fix: lower --num-docs, or use a larger source")
    samples = [source[i] for i in range(num_docs)]
    return [(s["input_ids"], s["labels"]) for s in samples]


# ---------------------------------------------------------------------------------------- scoring
class BucketTotals:
    """Summed NLL and token counts per position bucket (float64, on the CPU)."""

    def __init__(self, edges: list[int]):
        import torch

        self.edges = edges
        self.inner = torch.tensor(edges[1:-1], dtype=torch.long)
        self.nll = torch.zeros(len(edges) - 1, dtype=torch.float64)
        self.tokens = torch.zeros(len(edges) - 1, dtype=torch.long)

    def add(self, positions, nll, valid) -> None:
        """positions (n,) of the predicted tokens; nll and valid (B, n)."""
        import torch

        index = torch.searchsorted(self.inner, positions.cpu(), right=True).expand(nll.shape[0], -1)
        keep = valid.cpu()
        self.nll.index_add_(0, index[keep], nll.detach().cpu().double()[keep])
        self.tokens.index_add_(0, index[keep], torch.ones_like(index[keep]))

    def summary(self) -> tuple[list[dict], dict]:
        buckets = []
        for i, (start, end) in enumerate(zip(self.edges, self.edges[1:])):
            n = int(self.tokens[i])
            mean = float(self.nll[i]) / n if n else None
            buckets.append({"start": start, "end": end, "tokens": n, "nll": mean,
                            "ppl": math.exp(mean) if n else None})
        total = int(self.tokens.sum())
        mean = float(self.nll.sum()) / total if total else None
        return buckets, {"tokens": total, "overall_nll": mean, "overall_ppl": math.exp(mean) if total else None}


def stream_document_nll(model, input_ids, labels, totals: BucketTotals, piece_len: int) -> None:
    """Stream (B, L) documents chunk by chunk; add each predicted token's NLL to its bucket.

    Token t+1 is scored by the logits at t when labels[:, t+1] != -100 (the model's own
    shift). Only one piece's logits exist at any time.
    """
    import torch

    length = input_ids.shape[1]
    stream = model.stream()
    with torch.no_grad():
        for start in range(0, length - 1, piece_len):  # the last token predicts nothing: never fed
            end = min(start + piece_len, length - 1)
            _score_piece(totals, stream.feed(input_ids[:, start:end], logits="all"), labels, start, end)


def _score_piece(totals, logits, labels, start: int, end: int) -> None:
    """Add the NLL of the tokens start+1..end (predicted by logits of positions start..end-1) to `totals`."""
    import torch
    import torch.nn.functional as F

    targets = labels[:, start + 1:end + 1]
    valid = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.clamp(min=0).flatten(),
                          reduction="none").view_as(targets)
    totals.add(torch.arange(start + 1, end + 1), nll, valid)


# ---------------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    import torch

    from framework.eval import plots
    from framework.eval.model_uri import load_model
    from framework.eval.reporting import (log_to_active_run, metric_key, print_summary, progress,
                                          write_summary)

    _check_counts(args)
    spec = _data_spec(args) if args.data is not None else None
    seq_len = spec["seq_len"] if spec else (args.seq_len or DEFAULT_SEQ_LEN)
    edges = parse_buckets(args.buckets, seq_len)

    progress(f"loading {args.model}")
    loaded = load_model(args.model, tracking_uri=args.tracking_uri)
    model, tokenizer = loaded.model, loaded.tokenizer
    device = model.device

    if spec is not None:
        docs = data_documents(spec, tokenizer, args.num_docs)
        data_desc, data_stats = {"spec": spec}, {}
    else:
        from data_pipelines.corpus import shipped_corpus_path

        path = args.text or shipped_corpus_path()
        progress(f"tokenizing {path}")
        windows, data_stats = text_documents(path, tokenizer, seq_len, args.num_docs)
        docs = [(torch.tensor(w), torch.tensor(w)) for w in windows]
        data_desc = {"text": path if args.text else "shipped:austen.jsonl.gz"}

    totals = BucketTotals(edges)
    comet = is_comet(model)  # else a plain causal LM (SWAT, a baseline): one forward, logits piece by piece
    piece_len = model.config.chunk_size if comet else 4096
    for first in range(0, len(docs), args.batch_size):
        batch = docs[first:first + args.batch_size]
        ids = torch.stack([d[0] for d in batch]).long().to(device)
        labels = torch.stack([d[1] for d in batch]).long().to(device)
        progress(f"documents {first + 1}-{first + len(batch)} of {len(docs)} ({seq_len} tokens each)")
        if comet:
            stream_document_nll(model, ids, labels, totals, piece_len)
        else:
            full_attention_document_nll(model, ids, labels, totals, piece_len)

    buckets, overall = totals.summary()
    summary = {"model": args.model, "seq_len": seq_len, "num_docs": len(docs),
               "chunk_size": piece_len if comet else None,
               "device": str(device), "data": data_desc, **data_stats, **overall, "buckets": buckets}
    json_path = os.path.join(args.out, "perplexity.json")
    png_path = os.path.join(args.out, "perplexity.png")
    scored = [b for b in buckets if b["ppl"] is not None]
    plots.line_plot({os.path.basename(args.model.rstrip("/")) or args.model:
                     ([(b["start"] + b["end"]) / 2 for b in scored], [b["ppl"] for b in scored])},
                    png_path, title=f"Perplexity by position ({len(docs)} docs of {seq_len} tokens)",
                    xlabel="token position (bucket middle)", ylabel="perplexity")
    summary["files"] = {"summary": json_path, "plot": png_path}
    write_summary(summary, args.out, "perplexity.json")

    metrics = {}
    if overall["overall_ppl"] is not None:
        metrics[metric_key("eval", "perplexity", "overall_ppl")] = overall["overall_ppl"]
    for b in scored:
        metrics[metric_key("eval", "perplexity", f"pos_{b['start']}_{b['end']}", "ppl")] = b["ppl"]
    run_id = log_to_active_run(metrics, [json_path, png_path], "eval/perplexity")
    if run_id:
        progress(f"logged to MLflow run {run_id}")
    print_summary(summary)
    return 0


# ---------------------------------------------------------------------------------------- in-process use
def is_comet(model) -> bool:
    from framework.models.comet import CoMeTForCausalLM

    return isinstance(model, CoMeTForCausalLM)


def full_attention_document_nll(model, input_ids, labels, totals: BucketTotals, piece_len: int = 4096) -> None:
    """`stream_document_nll` for a plain transformers causal LM: one full-attention forward over the
    (B, L) documents, then the logits of `piece_len` positions at a time from the final hidden states
    (all L x vocabulary logits at once would not fit at long lengths)."""
    import torch

    length = input_ids.shape[1]
    with torch.inference_mode():
        hidden = model.base_model(input_ids=input_ids[:, :-1]).last_hidden_state  # the last token predicts nothing
        head = model.get_output_embeddings()
        for start in range(0, length - 1, piece_len):
            end = min(start + piece_len, length - 1)
            _score_piece(totals, head(hidden[:, start:end]), labels, start, end)


def text_perplexity(model, tokenizer, seq_len: int, num_docs: int = 1, buckets: str = "8", text: str | None = None,
                    full_attention: bool = False, log=lambda _: None) -> dict:
    """Perplexity of an already loaded model on `num_docs` windows of `seq_len` tokens of `text` (default: the
    shipped novels). A CoMeT model is streamed chunk by chunk; with `full_attention` the model is a plain
    transformers causal LM run in one forward. Returns {"seq_len", "num_docs", "tokens", "overall_nll",
    "overall_ppl", "buckets", "data"}."""
    import torch

    from data_pipelines.corpus import shipped_corpus_path

    edges = parse_buckets(buckets, seq_len)
    path = text or shipped_corpus_path()
    windows, _ = text_documents(path, tokenizer, seq_len, num_docs)
    device = next(model.parameters()).device
    totals = BucketTotals(edges)
    for i, window in enumerate(windows):
        ids = torch.tensor([window], dtype=torch.long, device=device)
        log(f"perplexity: document {i + 1} of {len(windows)} ({seq_len} tokens)")
        if full_attention:
            full_attention_document_nll(model, ids, ids, totals)
        else:
            stream_document_nll(model, ids, ids, totals, model.config.chunk_size)
    bucket_rows, overall = totals.summary()
    return {"seq_len": seq_len, "num_docs": len(windows), **overall, "buckets": bucket_rows,
            "data": path if text else "shipped:austen.jsonl.gz"}
