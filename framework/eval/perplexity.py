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

--compare-base also scores, on the same tokens, the CoMeT model's own backbone (the base model, same
weights) two ways: "base_window" runs it on each window of chunk_size tokens alone (the windows
CoMeT streams: window k = positions [k*c, (k+1)*c), whose logits predict tokens k*c+1 .. (k+1)*c),
and "base_full" runs it once with full attention over the whole document. base_full is skipped,
with the reason, when seq_len exceeds --base-full-max-len (default: the base model's
max_position_embeddings; 0 turns it off), and reported as "out of memory" when it does not fit.

stdout: {"model", "seq_len", "num_docs", "tokens", "overall_nll", "overall_ppl",
         "buckets": [{"start", "end", "tokens", "nll", "ppl"}, ...], "data", "files", ...}
  with --compare-base also "compare": {
         "comet" | "base_window" | "base_full": {"status": "ok", "tokens", "overall_nll", "overall_ppl",
             "buckets": [...], "chunks": [{"chunk", "start", "end", "tokens", "nll", "ppl"}, ...],
             "chunks_1_plus_ppl"}  (base_full: only {"status": <why not>} when it did not run),
         "ratios": {"comet_over_base_window" | "comet_over_base_full": {"overall", "chunk_0",
             "chunks_1_plus", "max_chunk", "max_chunk_index"} (ratios of perplexities; null when not run)}}
  Chunk i holds the tokens predicted by the logits of window i: positions [start, end) =
  [i*c+1, min((i+1)*c, seq_len-1)+1), so chunk 0 is what each model predicts with no memory or
  earlier context, and the top-level keys are the CoMeT model's.
--out gets perplexity.json and perplexity.png (one line per model with --compare-base); with an
active MLflow run, metrics eval/perplexity/overall_ppl and eval/perplexity/pos_<start>_<end>/ppl
(and eval/perplexity/base_window/overall_ppl, eval/perplexity/base_full/overall_ppl) and both files
are logged.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from framework.eval.streaming import is_comet, read_document

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
    parser.add_argument("--compare-base", action="store_true",
                        help="also score the CoMeT model's base model on the same tokens: on each chunk_size "
                             "window alone and with full attention; adds a 'compare' section")
    parser.add_argument("--base-full-max-len", type=int, default=None, metavar="N",
                        help="with --compare-base, skip the base model's full-attention pass when seq_len > N "
                             "(default: its max_position_embeddings; 0 = never run it)")
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
    if args.base_full_max_len is not None and args.base_full_max_len < 0:
        raise PerplexityArgumentError(f"--base-full-max-len {args.base_full_max_len}: must be 0 (never run the "
                                      "full-attention pass) or a length in tokens. Fix: pass e.g. "
                                      "--base-full-max-len 8192")
    if args.base_full_max_len is not None and not args.compare_base:
        raise PerplexityArgumentError(f"--base-full-max-len {args.base_full_max_len} only applies with "
                                      "--compare-base. Fix: add --compare-base, or drop --base-full-max-len")
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
    read_document(model, input_ids, piece_len, "stream", _scorer(totals, labels))


def _scorer(totals, labels):
    """The ``score(logits, start, end)`` of `read_document` that adds the NLL of each piece to `totals`."""
    return lambda logits, start, end: _score_piece(totals, logits, labels, start, end)


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
    from framework.eval.model_uri import load_model
    from framework.eval.reporting import log_to_active_run, print_summary, progress, write_summary

    _check_counts(args)
    spec = _data_spec(args) if args.data is not None else None
    seq_len = spec["seq_len"] if spec else (args.seq_len or DEFAULT_SEQ_LEN)
    edges = parse_buckets(args.buckets, seq_len)

    progress(f"loading {args.model}")
    loaded = load_model(args.model, tracking_uri=args.tracking_uri)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.compare_base:
        require_comet(model, f"--compare-base with --model {args.model}")
    docs, data_desc, data_stats = _load_documents(args, spec, tokenizer, seq_len)

    comet = is_comet(model)  # else a plain causal LM (SWAT, a baseline): one forward, logits piece by piece
    piece_len = model.config.chunk_size if comet else 4096
    compare = None
    if args.compare_base:
        compare = compare_with_base(model, docs, edges, args.batch_size, args.base_full_max_len, log=progress)
        buckets, overall = compare["comet"]["buckets"], _overall(compare["comet"])
    else:
        buckets, overall = _score_documents(model, docs, edges, args.batch_size, piece_len, seq_len)
    summary = {"model": args.model, "seq_len": seq_len, "num_docs": len(docs),
               "chunk_size": piece_len if comet else None,
               "device": str(model.device), "data": data_desc, **data_stats, **overall, "buckets": buckets}
    if compare is not None:
        summary["compare"] = compare
    json_path = os.path.join(args.out, "perplexity.json")
    png_path = os.path.join(args.out, "perplexity.png")
    _plot(summary, args.model, png_path)
    summary["files"] = {"summary": json_path, "plot": png_path}
    write_summary(summary, args.out, "perplexity.json")

    run_id = log_to_active_run(_metrics(summary), [json_path, png_path], "eval/perplexity")
    if run_id:
        progress(f"logged to MLflow run {run_id}")
    print_summary(summary)
    return 0


def _load_documents(args, spec, tokenizer, seq_len: int):
    """(docs as (input_ids, labels) pairs, the data description, the data stats) for --data or --text."""
    import torch

    from framework.eval.reporting import progress

    if spec is not None:
        return data_documents(spec, tokenizer, args.num_docs), {"spec": spec}, {}
    from data_pipelines.corpus import shipped_corpus_path

    path = args.text or shipped_corpus_path()
    progress(f"tokenizing {path}")
    windows, data_stats = text_documents(path, tokenizer, seq_len, args.num_docs)
    docs = [(torch.tensor(w), torch.tensor(w)) for w in windows]
    return docs, {"text": path if args.text else "shipped:austen.jsonl.gz"}, data_stats


def _batches(docs, batch_size: int, device):
    """(index of the first document, (B, L) input_ids, (B, L) labels) per batch of documents."""
    import torch

    for first in range(0, len(docs), batch_size):
        batch = docs[first:first + batch_size]
        ids = torch.stack([torch.as_tensor(d[0]) for d in batch]).long().to(device)
        labels = torch.stack([torch.as_tensor(d[1]) for d in batch]).long().to(device)
        yield first, ids, labels


def _score_documents(model, docs, edges, batch_size: int, piece_len: int, seq_len: int):
    """One model's (buckets, overall): a CoMeT model streamed, any other in one full-attention forward."""
    from framework.eval.reporting import progress

    totals = BucketTotals(edges)
    for first, ids, labels in _batches(docs, batch_size, model.device):
        progress(f"documents {first + 1}-{first + ids.shape[0]} of {len(docs)} ({seq_len} tokens each)")
        if is_comet(model):
            stream_document_nll(model, ids, labels, totals, piece_len)
        else:
            full_attention_document_nll(model, ids, labels, totals, piece_len)
    return totals.summary()


def _overall(report: dict) -> dict:
    return {key: report[key] for key in ("tokens", "overall_nll", "overall_ppl")}


def _plot(summary: dict, model_uri: str, png_path: str) -> None:
    """Perplexity by position bucket: one line for the model, or one per compared model that ran."""
    from framework.eval import plots

    name = os.path.basename(model_uri.rstrip("/")) or model_uri
    if "compare" in summary:
        reports = {PLOT_NAMES[key].format(name=name, chunk=summary["chunk_size"]): summary["compare"][key]
                   for key in COMPARED if summary["compare"][key]["status"] == "ok"}
    else:
        reports = {name: summary}
    series = {}
    for label, report in reports.items():
        scored = [b for b in report["buckets"] if b["ppl"] is not None]
        series[label] = ([(b["start"] + b["end"]) / 2 for b in scored], [b["ppl"] for b in scored])
    plots.line_plot(series, png_path,
                    title=f"Perplexity by position ({summary['num_docs']} docs of {summary['seq_len']} tokens)",
                    xlabel="token position (bucket middle)", ylabel="perplexity")


def _metrics(summary: dict) -> dict:
    """The MLflow metrics of a summary: overall and per-bucket ppl, and each compared base model's overall."""
    from framework.eval.reporting import metric_key

    metrics = {}
    if summary["overall_ppl"] is not None:
        metrics[metric_key("eval", "perplexity", "overall_ppl")] = summary["overall_ppl"]
    for b in summary["buckets"]:
        if b["ppl"] is not None:
            metrics[metric_key("eval", "perplexity", f"pos_{b['start']}_{b['end']}", "ppl")] = b["ppl"]
    for key in ("base_window", "base_full"):
        report = summary.get("compare", {}).get(key, {})
        if report.get("overall_ppl") is not None:
            metrics[metric_key("eval", "perplexity", key, "overall_ppl")] = report["overall_ppl"]
    return metrics


# ---------------------------------------------------------------------------------------- in-process use
def full_attention_document_nll(model, input_ids, labels, totals: BucketTotals, piece_len: int = 4096) -> None:
    """`stream_document_nll` for a plain transformers causal LM: one full-attention forward over the
    (B, L) documents, then the logits of `piece_len` positions at a time from the final hidden states
    (all L x vocabulary logits at once would not fit at long lengths)."""
    read_document(model, input_ids, piece_len, "full", _scorer(totals, labels))


# ---------------------------------------------------------------------------------------- comparing with the base model
COMPARED = ("comet", "base_window", "base_full")
PLOT_NAMES = {"comet": "{name} (CoMeT)", "base_window": "base model, windows of {chunk}",
              "base_full": "base model, full attention"}


def require_comet(model, what: str) -> None:
    """Fail, naming `what`, unless `model` is a CoMeT model (whose backbone is the base model to compare with)."""
    if not is_comet(model):
        raise PerplexityArgumentError(
            f"{what}: the model loads as {type(model).__name__}, not a CoMeT model, so it has no base model "
            "(backbone) to compare with. Fix: point --model at a CoMeT model (a directory with comet_config.json), "
            "or drop --compare-base")


def chunk_edges(seq_len: int, chunk_size: int) -> list[int]:
    """Bucket edges that put the tokens predicted by window i (positions i*c+1 .. (i+1)*c) in bucket i."""
    count = -(-(seq_len - 1) // chunk_size)  # windows fed: the last token predicts nothing
    return [0] + [i * chunk_size + 1 for i in range(1, count)] + [seq_len]


class ModelTotals:
    """One model's NLL sums, by position bucket (`edges`) and by chunk (`chunk_edges`)."""

    def __init__(self, edges: list[int], chunk_size: int):
        self.buckets = BucketTotals(edges)
        self.chunks = BucketTotals(chunk_edges(edges[-1], chunk_size))
        self.chunk_size = chunk_size

    def add(self, positions, nll, valid) -> None:
        self.buckets.add(positions, nll, valid)
        self.chunks.add(positions, nll, valid)

    def summary(self) -> dict:
        buckets, overall = self.buckets.summary()
        rows, _ = self.chunks.summary()
        chunks = [{**row, "chunk": i, "start": i * self.chunk_size + 1} for i, row in enumerate(rows)]
        later = int(self.chunks.tokens[1:].sum())
        later_nll = float(self.chunks.nll[1:].sum()) / later if later else None
        return {"status": "ok", **overall, "buckets": buckets, "chunks": chunks,
                "chunks_1_plus_ppl": math.exp(later_nll) if later else None}


def window_document_nll(model, input_ids, labels, totals, window: int) -> None:
    """`stream_document_nll` for a plain transformers causal LM that reads each window of `window` tokens
    alone: window k (positions k*window .. (k+1)*window-1) runs on its own, and its logits score tokens
    k*window+1 .. (k+1)*window, so the first token of window k+1 is predicted by the last position of window k.
    One window's logits exist at any time."""
    read_document(model, input_ids, window, "window", _scorer(totals, labels))


def base_full_skip_reason(backbone, seq_len: int, max_len: int | None) -> str | None:
    """Why the full-attention pass of the base model is not run, or None when it is."""
    if max_len == 0:
        return "not run: --base-full-max-len 0 turns it off"
    source = ""
    if max_len is None:
        max_len = getattr(backbone.config, "max_position_embeddings", None)
        source = " (the base model's max_position_embeddings)"
    if max_len is not None and seq_len > max_len:
        return f"not run: seq_len {seq_len} > --base-full-max-len {max_len}{source}"
    return None


def _full_attention_or_oom(backbone, ids, labels, totals) -> str | None:
    """Run `full_attention_document_nll`; "out of memory" (instead of raising) when it does not fit."""
    import torch

    from framework.eval.efficiency import is_oom

    try:
        full_attention_document_nll(backbone, ids, labels, totals)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        if ids.device.type == "cuda":
            torch.cuda.empty_cache()
        return "out of memory"
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def perplexity_ratios(comet: dict, base: dict) -> dict | None:
    """comet / base perplexity: overall, on chunk 0, pooled over chunks >= 1, and the largest per-chunk ratio."""
    if base.get("status") != "ok":
        return None
    per_chunk = [_ratio(a["ppl"], b["ppl"]) for a, b in zip(comet["chunks"], base["chunks"])]
    known = [(r, i) for i, r in enumerate(per_chunk) if r is not None]
    most, where = max(known) if known else (None, None)
    return {"overall": _ratio(comet["overall_ppl"], base["overall_ppl"]),
            "chunk_0": per_chunk[0] if per_chunk else None,
            "chunks_1_plus": _ratio(comet["chunks_1_plus_ppl"], base["chunks_1_plus_ppl"]),
            "max_chunk": most, "max_chunk_index": where}


def compare_with_base(model, docs, buckets="8", batch_size: int = 1, base_full_max_len: int | None = None,
                      log=lambda _: None, with_base: bool = True) -> dict:
    """Perplexity of a CoMeT model and of its base model (`model.backbone`, same weights) on the same tokens.

    docs: (input_ids, labels) pairs of 1-D tensors (or lists) of one length; labels -100 are not scored.
    buckets: a count or comma-separated edges as for --buckets, or a list of edges.
    Returns {"comet", "base_window", "base_full", "ratios"} as described in the module docstring: the CoMeT
    model streamed, the base model on each chunk_size window alone, and the base model with full attention
    (skipped when seq_len > base_full_max_len, default its max_position_embeddings; 0 = never). Memory stays
    bounded except in the full-attention pass, which reports "out of memory" when it does not fit.
    with_base=False streams the CoMeT model alone: base_window and base_full are {"status": "not run: ..."}.
    """
    require_comet(model, "compare_with_base")
    if not docs:
        raise PerplexityArgumentError("compare_with_base got no documents. Fix: pass at least one "
                                      "(input_ids, labels) pair")
    seq_len, chunk = len(docs[0][0]), model.config.chunk_size
    edges = parse_buckets(buckets, seq_len) if isinstance(buckets, str) else list(buckets)
    totals = {key: ModelTotals(edges, chunk) for key in COMPARED}
    no_base = None if with_base else "not run: the base comparison is off"
    full_status = no_base or base_full_skip_reason(model.backbone, seq_len, base_full_max_len)
    for first, ids, labels in _batches(docs, batch_size, model.device):
        sides = "" if no_base else f", base model on windows of {chunk}"
        sides += "" if full_status else ", base model with full attention"
        log(f"documents {first + 1}-{first + ids.shape[0]} of {len(docs)} ({seq_len} tokens each): CoMeT{sides}")
        stream_document_nll(model, ids, labels, totals["comet"], chunk)
        if not no_base:
            window_document_nll(model.backbone, ids, labels, totals["base_window"], chunk)
        if full_status is None:
            full_status = _full_attention_or_oom(model.backbone, ids, labels, totals["base_full"])
    report = {key: totals[key].summary() for key in COMPARED}
    if no_base:
        report["base_window"] = {"status": no_base}
    if full_status is not None:
        report["base_full"] = {"status": full_status}
    report["ratios"] = {f"comet_over_{key}": perplexity_ratios(report["comet"], report[key])
                        for key in ("base_window", "base_full")}
    return report


def text_perplexity(model, tokenizer, seq_len: int, num_docs: int = 1, buckets: str = "8", text: str | None = None,
                    full_attention: bool = False, log=lambda _: None, compare_base: bool = False,
                    base_full_max_len: int | None = None) -> dict:
    """Perplexity of an already loaded model on `num_docs` windows of `seq_len` tokens of `text` (default: the
    shipped novels). A CoMeT model is streamed chunk by chunk; with `full_attention` the model is a plain
    transformers causal LM run in one forward. Returns {"seq_len", "num_docs", "tokens", "overall_nll",
    "overall_ppl", "buckets", "data"}; with `compare_base` (a CoMeT model only) also "compare", the result of
    `compare_with_base` on the same windows."""
    import torch

    from data_pipelines.corpus import shipped_corpus_path

    if compare_base and full_attention:
        raise PerplexityArgumentError("text_perplexity: compare_base=True compares a CoMeT model with its base "
                                      "model, full_attention=True scores a plain causal LM. Fix: pass one of them")
    edges = parse_buckets(buckets, seq_len)
    path = text or shipped_corpus_path()
    windows, _ = text_documents(path, tokenizer, seq_len, num_docs)
    data = path if text else "shipped:austen.jsonl.gz"
    if compare_base:
        compare = compare_with_base(model, [(w, w) for w in windows], edges, 1, base_full_max_len, log=log)
        return {"seq_len": seq_len, "num_docs": len(windows), **_overall(compare["comet"]),
                "buckets": compare["comet"]["buckets"], "data": data, "compare": compare}
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
    return {"seq_len": seq_len, "num_docs": len(windows), **overall, "buckets": bucket_rows, "data": data}
