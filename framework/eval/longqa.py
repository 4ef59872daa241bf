"""Long-context question answering: a model against its base model at full context and with a sliding window.

    longctx eval longqa --model models:/comet-smollm2-lm@champion --tasks qa1,qa2,multi_needle \\
        --lengths 1024,4096 --samples 8 --window 512 --out outputs/eval/longqa

The tasks are made offline by ``data_pipelines.longqa``: BABILong-style bAbI QA1-QA5 in a haystack of the shipped
novels, multi-needle and multi-value needles, or ``jsonl:PATH`` for any JSONL of ``{context, question, answers}``.
Every model answers the very same samples: ``model`` (the one given), ``base_full`` (a CoMeT model's backbone at full
context; skipped for a plain model, which is its own base), and with ``--window N`` ``base_window`` (the base model's
weights with every layer attending to the last N tokens, at evaluation time: no training). Answers are decoded
greedily (``--max-new-tokens``), cut at the first line break, and scored by exact match and token F1 against every
reference answer (the best counts). Prints one JSON summary on stdout and writes ``longqa.json`` and
``longqa_f1.png`` (F1 by length, one line per model) to ``--out``; with an active MLflow run both are logged to it.
"""

from __future__ import annotations

import argparse
import os
import time

PROMPT = "{context}\n\nAnswer the question about the text above in a few words.\nQuestion: {question}\nAnswer:"


def prompt_text(sample) -> str:
    return PROMPT.format(context=sample.context, question=sample.question)


def answer_text(generated: str) -> str:
    """The answer: the generated text up to its first line break, stripped."""
    return generated.strip().split("\n", 1)[0].strip()


def answer(model, tokenizer, sample, max_new_tokens: int) -> str:
    import torch

    ids = tokenizer(prompt_text(sample), return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos)
    return answer_text(tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))


def models_to_compare(model, window: int | None) -> dict:
    """{name: causal LM} answering the same samples: the model, its base at full context, its base with a window."""
    from framework.eval.streaming import is_comet
    from framework.models.sliding import sliding_window_model

    base = model.backbone if is_comet(model) else model
    out = {"model": model}
    if base is not model:
        out["base_full"] = base
    if window:
        out["base_window"] = sliding_window_model(base, window).eval()
    return out


def evaluate(models: dict, tokenizer, tasks, lengths, samples: int, seed: int, max_new_tokens: int,
             log=lambda _: None) -> dict:
    """{"scores": {model: {task: {length: {"em", "f1", "n"}}}}, "examples": [...]}, every model on the same samples."""
    from data_pipelines.longqa import make_samples
    from framework.metrics.qa_scoring import exact_match, f1

    scores = {name: {} for name in models}
    examples = []
    for task in tasks:
        for length in lengths:
            batch = make_samples(task, tokenizer, length, samples, seed)
            for name, model in models.items():
                started, ems, f1s = time.perf_counter(), [], []
                for i, sample in enumerate(batch):
                    said = answer(model, tokenizer, sample, max_new_tokens)
                    ems.append(exact_match(said, sample.answers))
                    f1s.append(f1(said, sample.answers))
                    if i == 0:
                        examples.append({"model": name, "task": task, "length": length, "question": sample.question,
                                         "answers": sample.answers, "said": said})
                cell = {"em": sum(ems) / len(ems), "f1": sum(f1s) / len(f1s), "n": len(ems)}
                scores[name].setdefault(task, {})[str(length)] = cell
                log(f"longqa {task} at {length} tokens, {name}: EM {cell['em']:.2f} F1 {cell['f1']:.2f} "
                    f"({time.perf_counter() - started:.1f} s)")
    return {"scores": scores, "examples": examples}


def mean_f1_by_length(scores: dict, lengths) -> dict:
    """{model: [mean F1 over tasks at each length]}."""
    return {name: [sum(cells[str(n)]["f1"] for cells in per_task.values()) / max(len(per_task), 1) for n in lengths]
            for name, per_task in scores.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory, models:/<name>@<alias> or runs:/<run_id>")
    parser.add_argument("--tasks", default="qa1,qa2,qa3,qa4,qa5,multi_needle,multi_value",
                        help="comma-separated: qa1..qa5, multi_needle, multi_value, jsonl:PATH [all but jsonl]")
    parser.add_argument("--lengths", default="1024,4096", help="context lengths in tokens [1024,4096]")
    parser.add_argument("--samples", type=int, default=8, help="samples per (task, length) [8]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples [0]")
    parser.add_argument("--window", type=int, default=None,
                        help="also evaluate the base model with a sliding window of this many tokens (no training)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer tokens decoded greedily [16]")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")
    parser.add_argument("--out", default="outputs/eval/longqa", help="where longqa.json and the plot go")


def run(args: argparse.Namespace) -> int:
    from framework.eval.model_uri import load_model
    from framework.eval.passkey import parse_list
    from framework.eval.plots import line_plot
    from framework.eval.reporting import log_to_active_run, print_summary, progress, write_summary

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks is empty. Fix: e.g. --tasks qa1,multi_needle")
    lengths = parse_list(args.lengths, int, "lengths", "e.g. --lengths 1024,4096")
    if args.samples < 1 or args.max_new_tokens < 1 or (args.window is not None and args.window < 1):
        raise ValueError("--samples, --max-new-tokens and --window must be positive. Fix: e.g. --samples 8")
    progress(f"loading {args.model}")
    loaded = load_model(args.model, tracking_uri=args.tracking_uri)
    models = models_to_compare(loaded.model, args.window)
    started = time.perf_counter()
    result = evaluate(models, loaded.tokenizer, tasks, lengths, args.samples, args.seed, args.max_new_tokens,
                      log=progress)
    summary = {"model": loaded.uri, "model_class": type(loaded.model).__name__, "tasks": tasks, "lengths": lengths,
               "samples": args.samples, "seed": args.seed, "window": args.window, **result,
               "mean_f1": mean_f1_by_length(result["scores"], lengths),
               "seconds": round(time.perf_counter() - started, 2)}
    os.makedirs(args.out, exist_ok=True)
    plot = os.path.join(args.out, "longqa_f1.png")
    line_plot({name: (lengths, values) for name, values in summary["mean_f1"].items()}, plot,
              title=f"long-context QA: {loaded.uri}", xlabel="context tokens", ylabel="mean F1 over tasks")
    summary["plot"] = plot
    path = write_summary(summary, args.out, "longqa.json")
    metrics = {f"eval/longqa/{name}/{task}/f1_{n}": cell["f1"] for name, per_task in result["scores"].items()
               for task, cells in per_task.items() for n, cell in cells.items() if not task.startswith("jsonl:")}
    run_id = log_to_active_run(metrics, [path, plot], "eval/longqa")
    if run_id:
        summary["mlflow_run_id"] = run_id
    print_summary(summary)
    return 0
