"""Question answering of a RAM/COMI context compressor, by compression ratio, against the full prompt
and against truncation to the same budget.

    longctx eval qa --model models:/comi-qa-tiny@champion --ratios 4,8,16,32 --num-samples 64
    longctx eval qa --model runs:/<run_id> --data s3://bucket/nq-dev.jsonl --seq-len 8192
    longctx eval qa --model ram-dir --data '{"kind": "qa_facts", "seq_len": 1024, "seed": 7, "distractors": 2}'

Every sample is answered several ways from the same question, greedily (at most --max-new-tokens
tokens, stopping at the tokenizer's eos):

  uncompressed     the decoder reads every context token (``token_memory``): the reference;
  compressed/<r>   the compressor's memory at requested ratio r (``compress(ratio=r)``). COMI: r is
                   tokens per memory slot (rounded to an integer); RAM: r becomes the keep fraction
                   rho = (L/r - 1)/(L - 1) of L-token segments read closely, so RAM cannot exceed L:1;
  truncation/<r>   the first m context tokens, m being the memory length the compressor reached on
                   that same sample (the same budget, per sample). The head is kept, as a reader
                   that runs out of room would; the answer may lie anywhere in the context. (This is the
                   *achieved*-budget truncation; ``benchmarks/compression_qa.py``'s "truncation" keeps
                   ceil(n / r) tokens, the *requested* ratio's budget: docs/benchmarks.md.)

The ratio of a setting is what it achieved: all context tokens / all memory slots. Answers are
scored by exact match and token F1 after SQuAD normalisation (``framework.metrics.qa_scoring``), the
best over a sample's acceptable answers. compress_ms / decode_ms are the mean wall time per sample of
building the memory and of decoding from it (in batches of --batch-size). For RAM the compressed
settings add answer_segment_recall: the share of the segments holding the answer (the sample's
evidence) that were read closely.

--data is a JSON data spec (kinds qa_facts, qa_jsonl) or the path/URI of {input, prompt, answer}
JSON Lines (qa_jsonl). Default: the synthetic facts task {"kind": "qa_facts", "seq_len": 512,
"seed": 12345}, whose seed differs from training's default (0). The first --num-samples samples are
used (all of them when the source holds fewer). --seq-len overrides the spec's seq_len; --seed its
seed.

stdout: {"model", "method", "num_samples", "uncompressed": {"exact_match", "f1", "ratio",
         "compress_ms", "decode_ms"}, "ratios": {"<r>": {"compressed": {...}, "truncation": {...}}},
         "data": spec, "examples", "files", ...}
--out gets qa.json and qa.png (exact match against ratio); with an active MLflow run (or
MLFLOW_RUN_ID) the metrics eval/qa/uncompressed/<metric> and eval/qa/<compressed|truncation>/<r>/<metric>
and both files (under eval/qa) are logged to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from data_pipelines.qa import QA_KINDS

DEFAULT_RATIOS = "4,8,16,32"
DEFAULT_OUT = os.path.join("outputs", "eval", "qa")
DEFAULT_SEED = 12345  # the facts task's seed here; training's default is 0, so these are unseen samples
DEFAULT_SPEC = {"kind": "qa_facts", "seq_len": 512, "seed": DEFAULT_SEED}
DEFAULT_JSONL_SEQ_LEN = 4096
NUM_EXAMPLES = 3


class QAArgumentError(ValueError):
    """A `longctx eval qa` option is invalid; the message names it and the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="RAM/COMI compressor: a save_pretrained directory, models:/<name>@<alias> or runs:/<id>")
    parser.add_argument("--data", metavar="SOURCE", default=None,
                        help="a JSON data spec (qa_facts, qa_jsonl), or the path/URI of {input, prompt, answer} "
                             f"JSONL (default: {json.dumps(DEFAULT_SPEC)})")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="context tokens; overrides the spec's seq_len (default: the spec's, else 512 for "
                             f"qa_facts and {DEFAULT_JSONL_SEQ_LEN} for a JSONL file)")
    parser.add_argument("--ratios", default=DEFAULT_RATIOS,
                        help=f"comma-separated compression ratios >= 1 (default {DEFAULT_RATIOS})")
    parser.add_argument("--num-samples", type=int, default=64, help="samples to answer (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples answered together (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="longest answer decoded (default 16)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"the data spec's seed (default: the spec's; {DEFAULT_SEED} for the default task)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where qa.json and qa.png go (default {DEFAULT_OUT})")


# ---------------------------------------------------------------------------------------- options
def parse_ratios(text: str) -> list[float]:
    """Sorted distinct ratios >= 1 from "4,8,16,32"."""
    fix = "pass e.g. --ratios 4,8,16,32"
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise QAArgumentError(f"--ratios {text!r} is not a comma-separated list of numbers. Fix: {fix}") from None
    if not values:
        raise QAArgumentError(f"--ratios is empty. Fix: {fix}")
    bad = [v for v in values if not math.isfinite(v) or v < 1]
    if bad:
        raise QAArgumentError(f"--ratios {text!r}: {', '.join(f'{v:g}' for v in bad)} is not a compression ratio "
                              f"(context tokens per memory slot, >= 1). Fix: {fix}")
    return sorted(set(values))


def ratio_key(ratio: float) -> str:
    return f"{ratio:g}"


def _check_counts(args) -> None:
    for flag, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise QAArgumentError(f"{flag} {value}: must be at least 1. Fix: pass e.g. {flag} 8")
    if args.seq_len is not None and args.seq_len < 1:
        raise QAArgumentError(f"--seq-len {args.seq_len}: must be at least 1. Fix: pass e.g. --seq-len 512")
    if args.seed is not None and args.seed < 0:
        raise QAArgumentError(f"--seed {args.seed}: must be >= 0. Fix: pass e.g. --seed {DEFAULT_SEED}")


def _source_exists(uri: str) -> tuple[bool, str]:
    """Whether a local path, glob or fsspec URI names something (and why not, when it cannot tell)."""
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return (bool(fs.glob(path)) if any(ch in path for ch in "*?[") else bool(fs.exists(path))), ""
    except Exception as err:  # noqa: BLE001 - ImportError for a missing backend, OSError, ValueError
        return False, f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"


def data_spec(data: str | None, seq_len: int | None, seed: int | None, num_samples: int) -> dict:
    """The validated data spec of --data / --seq-len / --seed."""
    from data_pipelines.factory import validate_spec

    example = "e.g. --data '{\"kind\": \"qa_facts\", \"seq_len\": 512}' or --data path/to/dev.jsonl"
    if data is None:
        spec = dict(DEFAULT_SPEC)
    else:
        try:
            spec = json.loads(data)
        except json.JSONDecodeError as err:
            if data.lstrip().startswith(("{", "[")):
                raise QAArgumentError(f"--data is not valid JSON ({err}). Fix: quote the spec for the shell, "
                                      f"{example}") from None
            exists, why = _source_exists(data)
            if not exists:
                raise QAArgumentError(f"--data {data!r} is neither a JSON data spec nor an existing path or URI{why}. "
                                      f"Fix: {example}") from None
            spec = {"kind": "qa_jsonl", "path": data}
        if not isinstance(spec, dict):
            raise QAArgumentError(f"--data {data!r} must be a JSON object with a 'kind' key. Fix: {example}")
    if spec.get("kind") not in QA_KINDS:
        raise QAArgumentError(f"--data kind={spec.get('kind')!r} gives no question-answer samples. Fix: use kind "
                              f"qa_facts or qa_jsonl, {example}")
    if seq_len is not None:
        spec["seq_len"] = seq_len
    spec.setdefault("seq_len", DEFAULT_SPEC["seq_len"] if spec["kind"] == "qa_facts" else DEFAULT_JSONL_SEQ_LEN)
    if seed is not None:
        spec["seed"] = seed
    if spec["kind"] == "qa_facts":
        spec.setdefault("num_samples", num_samples)  # a facts sample depends on (seed, index) only
    return validate_spec(spec)


# ---------------------------------------------------------------------------------------- evaluation
@dataclass
class SettingTotals:
    """What one way of answering (uncompressed, compressed/r, truncation/r) added up over the samples.
    correct: each sample's exact match as a bool, in order; kept_share: per RAM sample, the share of its
    segments read closely (the chance level of answer_segment_recall); predictions: the first NUM_EXAMPLES."""

    samples: int = 0
    exact_match: float = 0.0
    f1: float = 0.0
    context_tokens: int = 0
    memory_slots: int = 0
    compress_s: float = 0.0
    decode_s: float = 0.0
    recall_hits: int = 0
    recall_total: int = 0
    keep_fraction: float | None = None
    predictions: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    kept_share: list = field(default_factory=list)

    def add(self, memory, texts, answers) -> None:
        """Score one batch: `memory` (a Compressed) gives the tokens and slots, `texts` the decoded answers,
        `answers` each sample's acceptable answers."""
        from framework.metrics.qa_scoring import exact_match, f1

        self.context_tokens += sum(memory.context_tokens)
        self.memory_slots += sum(memory.memory_slots)
        for text, gold in zip(texts, answers):
            em = exact_match(text, gold)
            self.samples += 1
            self.exact_match += em
            self.f1 += f1(text, gold)
            self.correct.append(em == 1.0)
            if len(self.predictions) < NUM_EXAMPLES:
                self.predictions.append(text)

    def add_recall(self, comp, segment_size: int | None = None) -> None:
        """RAM: add the batch's answer-segment counts; with `segment_size`, each sample's kept share too."""
        from framework.models.compression import ram

        hits, total = comp.answer_segments_read()
        self.recall_hits += hits
        self.recall_total += total
        if segment_size is not None:
            for kept, tokens in zip(comp.kept, comp.context_tokens):
                self.kept_share.append(len(kept) / max(1, len(ram.segment_bounds(tokens, segment_size))))

    def summary(self, recall: bool = False) -> dict:
        n = max(1, self.samples)
        out = {"exact_match": self.exact_match / n, "f1": self.f1 / n,
               "ratio": round(self.context_tokens / max(1, self.memory_slots), 4),
               "compress_ms": round(1000 * self.compress_s / n, 3), "decode_ms": round(1000 * self.decode_s / n, 3)}
        if recall:
            out["answer_segment_recall"] = self.recall_hits / self.recall_total if self.recall_total else None
        if self.keep_fraction is not None:
            out["keep_fraction"] = round(self.keep_fraction, 6)
        return out


class _Timer:
    def __init__(self, device):
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()


def evaluate_qa(model, tokenizer, source, num_samples: int, ratios: Sequence[float], batch_size: int = 8,
                max_new_tokens: int = 16, log: Callable[[str], None] = lambda _: None) -> dict:
    """Answer the first `num_samples` samples of `source` every way; {"uncompressed": SettingTotals,
    ("compressed", r): ..., ("truncation", r): ...}. `model` is a CompressorForQA."""
    import torch

    from data_pipelines.loader import collate
    from framework.models.compression import ram

    model.eval()
    ram_model = model.config.method == "ram"
    device, timer, eos = model.device, _Timer(model.device), tokenizer.eos_token_id
    totals = {"uncompressed": SettingTotals()}
    for r in ratios:
        totals["compressed", r] = SettingTotals(
            keep_fraction=ram.keep_fraction_for_ratio(r, model.config.segment_size) if ram_model else None)
        totals["truncation", r] = SettingTotals()
    question_texts, answer_lists = [], []
    started = time.perf_counter()

    def answer_and_score(setting, build, batch) -> object:
        t0 = timer.now()
        memory = build()
        t1 = timer.now()
        ids = model.answer(memory.memory, batch["question_ids"], batch["question_mask"], max_new_tokens, eos)
        t2 = timer.now()
        total = totals[setting]
        total.compress_s, total.decode_s = total.compress_s + (t1 - t0), total.decode_s + (t2 - t1)
        total.add(memory, [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids], batch["answers"])
        return memory

    with torch.no_grad():
        for lo in range(0, num_samples, batch_size):
            hi = min(num_samples, lo + batch_size)
            batch = collate([source[i] for i in range(lo, hi)])
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            ctx, ctx_mask = batch["context_ids"], batch["context_mask"]
            q, q_mask = batch["question_ids"], batch["question_mask"]
            for b in range(hi - lo):
                if len(question_texts) < NUM_EXAMPLES:
                    question_texts.append(tokenizer.decode(q[b][q_mask[b]].tolist(), skip_special_tokens=True))
                    answer_lists.append(list(batch["answers"][b]))

            answer_and_score("uncompressed", lambda: model.token_memory(ctx, ctx_mask), batch)
            for r in ratios:
                evidence = batch["evidence_mask"] if ram_model else None  # only for RAM's answer-segment recall
                comp = answer_and_score(("compressed", r),
                                        lambda: model.compress(ctx, ctx_mask, q, q_mask, evidence, ratio=r), batch)
                if ram_model:
                    totals["compressed", r].add_recall(comp)
                answer_and_score(("truncation", r), lambda: model.token_memory(ctx, ctx_mask, keep_tokens=comp.memory_slots),
                                 batch)
            unc = totals["uncompressed"]
            line = ", ".join(f"{r:g}x {totals['compressed', r].exact_match / totals['compressed', r].samples:.2f}"
                             for r in ratios)
            log(f"qa samples {lo + 1}-{hi}/{num_samples}: exact match uncompressed "
                f"{unc.exact_match / unc.samples:.2f}, compressed {line} ({time.perf_counter() - started:.1f} s)")
    totals["examples"] = [{"question": qt, "answers": al} for qt, al in zip(question_texts, answer_lists)]
    return totals


def summarize(totals: dict, ratios: Sequence[float], method: str) -> dict:
    examples = totals["examples"]
    for i, example in enumerate(examples):
        example["predictions"] = {"uncompressed": totals["uncompressed"].predictions[i]}
        for r in ratios:
            for kind in ("compressed", "truncation"):
                example["predictions"][f"{kind}/{ratio_key(r)}"] = totals[kind, r].predictions[i]
    summary = {"uncompressed": totals["uncompressed"].summary(), "ratios": {}}
    summary["uncompressed"]["ratio"] = 1.0
    for r in ratios:
        summary["ratios"][ratio_key(r)] = {"compressed": totals["compressed", r].summary(recall=method == "ram"),
                                           "truncation": totals["truncation", r].summary()}
    summary["examples"] = examples
    return summary


def write_plot(summary: dict, path: str, title: str) -> str:
    from framework.eval.plots import ratio_plot

    rows = list(summary["ratios"].values())
    series = {kind: ([row[kind]["ratio"] for row in rows], [row[kind]["exact_match"] for row in rows])
              for kind in ("compressed", "truncation")}
    return ratio_plot(series, path, title=title, xlabel="achieved compression ratio (context tokens / memory slots)",
                      ylabel="exact match", references={"uncompressed": summary["uncompressed"]["exact_match"]},
                      ylim=(-0.02, 1.02))


def metrics_of(summary: dict) -> dict:
    from framework.eval.reporting import metric_key

    metrics = {}

    def add(values: dict, *prefix) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)):
                metrics[metric_key("eval", "qa", *prefix, name)] = value

    add(summary["uncompressed"], "uncompressed")
    for r, row in summary["ratios"].items():
        for kind in ("compressed", "truncation"):
            add(row[kind], kind, r)
    return metrics


# ---------------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    from data_pipelines.factory import build_source
    from framework.eval.model_uri import load_model
    from framework.eval.reporting import log_to_active_run, print_summary, progress, write_summary

    _check_counts(args)
    ratios = parse_ratios(args.ratios)
    spec = data_spec(args.data, args.seq_len, args.seed, args.num_samples)

    started = time.perf_counter()
    progress(f"loading {args.model}")
    loaded = load_model(args.model, tracking_uri=args.tracking_uri, compressor=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    progress(f"building the {spec['kind']} samples")
    source = build_source(spec, tokenizer)
    n = min(args.num_samples, len(source))
    if n < args.num_samples:
        progress(f"--data holds {len(source)} sample(s); evaluating all of them instead of --num-samples "
                 f"{args.num_samples}")
    method = model.config.method
    totals = evaluate_qa(model, tokenizer, source, n, ratios, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, log=progress)
    summary = {"model": args.model, "method": method, "num_samples": n, "max_new_tokens": args.max_new_tokens,
               "device": str(model.device), "data": spec, **summarize(totals, ratios, method)}
    if method == "ram":
        summary["segment_size"] = model.config.segment_size
    json_path, png_path = os.path.join(args.out, "qa.json"), os.path.join(args.out, "qa.png")
    write_plot(summary, png_path, f"{method.upper()} QA, {n} samples of {spec['seq_len']} tokens")
    summary["files"] = {"summary": json_path, "plot": png_path}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_summary(summary, args.out, "qa.json")
    run_id = log_to_active_run(metrics_of(summary), [json_path, png_path], "eval/qa")
    if run_id:
        summary["mlflow_run_id"] = run_id
        progress(f"logged to MLflow run {run_id}")
    print_summary(summary)
    return 0
