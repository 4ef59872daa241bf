"""Passkey retrieval: a random key hidden at a given depth of a long haystack; can the model say it?

    longctx eval passkey --model models:/comet-passkey-tiny@champion \\
        --lengths 4096,65536,1048576 --depths 0,0.25,0.5,0.75,1 --trials 8 --seed 0 --out outputs/eval/passkey

Each haystack is streamed through the model chunk by chunk (``CoMeTStream``; another causal LM on its KV
cache, ``framework.eval.streaming``), so a CoMeT model's memory stays
flat whatever the length; then tokens are decoded greedily until the answer's first run of digits ends
or holds as many digits as the key. A trial is correct when that run is the key exactly (answers are
compared as text, so any tokenizer works: one token per digit, or digits grouped as Llama 3 does). Prints one JSON summary on stdout:

    {"accuracy": {"<length>": acc}, "by_depth": {"<depth>": {"<length>": acc}},
     "digit_accuracy": {...}, "heatmap": "<out>/passkey_heatmap.png", ...}

and writes ``passkey.json`` and ``passkey_heatmap.png`` (depth x length) to ``--out``. With an
active MLflow run (or ``MLFLOW_RUN_ID``) the accuracies and both files are logged to it.

``--filler repeat`` (default) is the passkey test of the literature: "The grass is green. The
sky is blue. ..." repeated. ``--filler novels`` hides the key in the novels the project ships;
``--filler @FILE`` in the text of FILE.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER
from framework.eval.streaming import KVCacheLM, is_comet

DEFAULT_LENGTHS = "4096,65536,1048576"
DEFAULT_DEPTHS = "0,0.25,0.5,0.75,1"


def score_answer(generated: str, key: str) -> bool:
    """Exact match: the first run of digits in the model's answer is the key, no more and no less."""
    found = re.search(r"\d+", generated)
    return found is not None and found.group(0) == key


def digit_hits(generated: str, key: str) -> int:
    """How many of the key's digit positions the answer's first digit run gets right (chance: 1 in 10 each)."""
    found = re.search(r"\d+", generated)
    answer = found.group(0) if found else ""
    return sum(a == b for a, b in zip(answer, key))


def parse_list(text: str, kind, name: str, fix: str) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} {text!r} is not a comma-separated list of {kind.__name__} values. Fix: {fix}") from None
    if not values:
        raise ValueError(f"--{name} is empty. Fix: {fix}")
    return values


def check_grid(lengths: Sequence[int], depths: Sequence[float], trials: int) -> None:
    bad = [n for n in lengths if n < 64]
    if bad:
        raise ValueError(f"--lengths {bad}: a haystack must hold at least 64 tokens. Fix: use e.g. --lengths 4096,65536")
    bad = [d for d in depths if not 0.0 <= d <= 1.0]
    if bad:
        raise ValueError(f"--depths {bad}: a depth is a fraction of the haystack in [0, 1]. Fix: e.g. --depths 0,0.5,1")
    if trials < 1:
        raise ValueError(f"--trials {trials}: need at least 1 trial per cell. Fix: e.g. --trials 8")


def resolve_filler(spec: str):
    """None (the shipped novels), the repeated passkey sentences, or a file's text."""
    if spec == "novels":
        return None
    if spec == "repeat":
        return PASSKEY_REPEAT_FILLER
    if spec.startswith("@"):
        import fsspec

        try:
            with fsspec.open(spec[1:], "rt") as fh:
                return fh.read()
        except (OSError, ValueError) as err:
            raise ValueError(f"--filler {spec}: cannot read {spec[1:]} ({err}). Fix: pass @<path of a text file>") from None
    raise ValueError(f"--filler {spec!r} is not a filler. Fix: use repeat, novels, or @<path of a text file>")


@dataclass
class CellResult:
    length: int
    depth: float
    correct: int
    digit_hits: int
    trials: int
    answers: list


def answer_done(text: str, digits: int) -> bool:
    """Whether a decoded answer is complete: its first run of digits has ended (a non-digit follows it) or holds
    `digits` digits already (the key's length; more would not change the score)."""
    found = re.search(r"\d+", text)
    return found is not None and (found.end() < len(text) or len(found.group(0)) >= digits)


def _answer_greedy(model, prompt, digits: int, report: Callable[[int], None], piece_tokens: int, tokenizer):
    """Stream `prompt` (B, n) through the model, then decode greedily until each row's answer is done
    (`answer_done`) or `digits` + 4 tokens: a tokenizer may spend one token per digit, group digits, or put a space
    token first. Returns each row's new tokens (a list of lists)."""
    stream = model.stream()
    n = prompt.shape[1]
    logits = None
    for start in range(0, n, piece_tokens):
        end = min(n, start + piece_tokens)
        logits = stream.feed(prompt[:, start:end], logits="last" if end == n else None)
        report(end)
    rows = [[] for _ in range(prompt.shape[0])]
    done = [False] * len(rows)
    for step in range(digits + 4):
        token = logits[:, -1].argmax(-1)
        for r, t in enumerate(token.tolist()):
            if not done[r]:
                rows[r].append(t)
                done[r] = answer_done(tokenizer.decode(rows[r], skip_special_tokens=True), digits)
        if all(done):
            break
        logits = stream.feed(token[:, None], logits="last")
    return rows


def _batches(task, trials: int, batch_size: int):
    """(first trial, trials) batches of at most `batch_size` trials whose keys take the same number of tokens (so
    their prompts have one length: with a tokenizer that groups digits, keys differ in token count)."""
    by_len: dict[int, list[int]] = {}
    for i in range(trials):
        by_len.setdefault(task.answer_len(i), []).append(i)
    for group in by_len.values():
        for lo in range(0, len(group), batch_size):
            yield group[lo], group[lo:lo + batch_size]


def evaluate_passkey(model, tokenizer, lengths: Sequence[int], depths: Sequence[float], trials: int, seed: int = 0,
                     digits: int = 5, filler=PASSKEY_REPEAT_FILLER, batch_size: int | None = None,
                     log: Callable[[str], None] = lambda _: None) -> list[CellResult]:
    """Run every (length, depth) cell; `batch_size` trials go through the model together."""
    import torch

    from data_pipelines.synthetic import PasskeyTask

    device = next(model.parameters()).device
    batch_size = batch_size or trials
    piece = model.config.chunk_size * max(1, 16384 // model.config.chunk_size)
    results = []
    for length in lengths:
        for depth in depths:
            # the same seed for every cell of a length: each depth hides the same keys
            task = PasskeyTask(tokenizer, seq_len=length, num_samples=trials, seed=seed + length, digits=digits,
                               depth=depth, filler=filler)
            cell = CellResult(length, depth, 0, 0, trials, [])
            started = time.perf_counter()
            for lo, group in _batches(task, trials, batch_size):
                ids = torch.stack([task[i]["input_ids"] for i in group]).to(device)
                prompt, keys = ids[:, :-task.answer_len(group[0])], [task.key(i) for i in group]
                last = [0.0]

                def report(done: int) -> None:
                    now = time.perf_counter()
                    if now - last[0] > 10 or done == prompt.shape[1]:
                        last[0] = now
                        rate = done * ids.shape[0] / max(now - started, 1e-9)
                        log(f"passkey length {length} depth {depth:g} trials {lo + 1}-{lo + ids.shape[0]}/{trials}: "
                            f"{done}/{prompt.shape[1]} tokens ({rate:,.0f} tok/s)")

                answers = _answer_greedy(model, prompt, digits, report, piece, tokenizer)
                for row, key in zip(answers, keys):
                    text = tokenizer.decode(row, skip_special_tokens=True)
                    cell.correct += score_answer(text, key)
                    cell.digit_hits += digit_hits(text, key)
                    cell.answers.append({"key": key, "answer": text})
            results.append(cell)
            log(f"passkey length {length} depth {depth:g}: {cell.correct}/{trials} correct")
    return results


def summarize(results: Sequence[CellResult], digits: int) -> dict:
    lengths = sorted({c.length for c in results})
    depths = sorted({c.depth for c in results})
    cell = {(c.length, c.depth): c for c in results}

    def acc(cells, field="correct", per=1):
        total = sum(c.trials for c in cells) * per
        return sum(getattr(c, field) for c in cells) / total if total else 0.0

    return {
        "lengths": lengths,
        "depths": depths,
        "trials": results[0].trials if results else 0,
        "accuracy": {str(n): acc([cell[n, d] for d in depths]) for n in lengths},
        "by_depth": {f"{d:g}": {str(n): acc([cell[n, d]]) for n in lengths} for d in depths},
        "digit_accuracy": {str(n): acc([cell[n, d] for d in depths], "digit_hits", digits) for n in lengths},
        "overall_accuracy": acc(results),
        "chance_accuracy": 1.0 / (9 * 10 ** (digits - 1)),
        "samples": [{"length": c.length, "depth": c.depth, **a} for c in results for a in c.answers[:2]],
    }


def write_heatmap(summary: dict, path: str, title: str) -> str:
    from framework.eval.plots import heatmap

    depths, lengths = summary["depths"], summary["lengths"]
    values = [[summary["by_depth"][f"{d:g}"][str(n)] for n in lengths] for d in depths]
    return heatmap(values, rows=[f"{d:g}" for d in depths], cols=[_short(n) for n in lengths], path=path,
                   title=title, xlabel="context length (tokens)", ylabel="key depth")


def _short(n: int) -> str:
    for unit, size in (("M", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def passkey_report(loaded, lengths, depths, trials, seed, out_dir, *, filler=PASSKEY_REPEAT_FILLER, digits=5,
                   batch_size=None, title=None) -> dict:
    """Evaluate, write passkey.json and the heat-map, log to an active MLflow run; returns the summary."""
    import os

    from framework.eval.reporting import log_to_active_run, progress, write_summary

    started = time.perf_counter()
    model = loaded.model if is_comet(loaded.model) else KVCacheLM(loaded.model)  # SWAT, a baseline
    results = evaluate_passkey(model, loaded.tokenizer, lengths, depths, trials, seed=seed, digits=digits,
                               filler=filler, batch_size=batch_size, log=progress)
    summary = {"model": loaded.uri, "seed": seed, "digits": digits, **summarize(results, digits)}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["heatmap"] = write_heatmap(summary, os.path.join(out_dir, "passkey_heatmap.png"),
                                       title or f"passkey retrieval: {loaded.uri}")
    path = write_summary(summary, out_dir, "passkey.json")
    metrics = {f"eval/passkey/acc_{n}": v for n, v in summary["accuracy"].items()}
    metrics.update({f"eval/passkey/acc_{n}_depth_{d}": v for d, row in summary["by_depth"].items()
                    for n, v in row.items()})
    run_id = log_to_active_run(metrics, [path, summary["heatmap"]], "eval/passkey")
    if run_id:
        summary["mlflow_run_id"] = run_id
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory, models:/<name>@<alias> or runs:/<run_id>")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"haystack lengths in tokens [{DEFAULT_LENGTHS}]")
    parser.add_argument("--depths", default=DEFAULT_DEPTHS, help=f"key depths in [0, 1] [{DEFAULT_DEPTHS}]")
    parser.add_argument("--trials", type=int, default=8, help="keys per (length, depth) cell [8]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys and haystacks [0]")
    parser.add_argument("--digits", type=int, default=5, help="digits per key [5]")
    parser.add_argument("--filler", default="repeat", help="repeat | novels | @FILE [repeat]")
    parser.add_argument("--batch-size", type=int, default=None, help="trials streamed together [all of a cell]")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")
    parser.add_argument("--out", default="outputs/eval/passkey", help="where passkey.json and the heat-map go")


def run(args: argparse.Namespace) -> int:
    from framework.eval.model_uri import load_model
    from framework.eval.reporting import print_summary, progress

    lengths = parse_list(args.lengths, int, "lengths", "e.g. --lengths 4096,65536,1048576")
    depths = parse_list(args.depths, float, "depths", "e.g. --depths 0,0.25,0.5,0.75,1")
    check_grid(lengths, depths, args.trials)
    filler = resolve_filler(args.filler)
    progress(f"loading {args.model}")
    loaded = load_model(args.model, tracking_uri=args.tracking_uri)
    summary = passkey_report(loaded, lengths, depths, args.trials, args.seed, args.out, filler=filler,
                             digits=args.digits, batch_size=args.batch_size)
    print_summary(summary)
    return 0


# ---------------------------------------------------------------------------------------- full attention
def evaluate_passkey_full_attention(model, tokenizer, lengths: Sequence[int], depths: Sequence[float], trials: int,
                                    seed: int = 0, digits: int = 5, filler=PASSKEY_REPEAT_FILLER,
                                    batch_size: int | None = 1,
                                    log: Callable[[str], None] = lambda _: None) -> list[CellResult]:
    """`evaluate_passkey` for a plain transformers causal LM with full attention (one prefill, greedy decode).

    The haystacks, keys and scoring are exactly those `evaluate_passkey` gives a CoMeT model with the
    same arguments; `batch_size` defaults to 1 because a full-attention prefill's memory grows with it.
    """
    return evaluate_passkey(KVCacheLM(model), tokenizer, lengths, depths, trials, seed=seed, digits=digits,
                            filler=filler, batch_size=batch_size, log=log)
