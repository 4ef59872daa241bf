"""EleutherAI's lm-evaluation-harness on any longctx model, offline: RULER's synthetic long-context tasks
at the lengths you choose, and rolling log-likelihood (perplexity) on a local text file.

    longctx eval harness --model models:/comet-32k-tiny@champion \\
        --tasks niah_single_1,niah_multikey_2,ruler_vt --lengths 4096,8192 --limit 20 --out outputs/eval/harness
    longctx eval harness --model DIR --text-file notes.jsonl --out results.json

The model (a CoMeT folder, SWAT, a baseline or any Hugging Face causal LM folder; --model takes a
directory, models:/<name>@<alias> or runs:/<run_id>) is loaded by lm-eval's ``HFLM`` through the stock
``AutoModelForCausalLM`` path, after ``import framework`` has registered CoMeT and SWAT with it.

Offline tasks (lm-eval generates their data locally with the model's own tokenizer):
niah_single_1, niah_multikey_2, niah_multikey_3, ruler_vt, ruler_cwe, ruler_fwe. ``--lengths`` sets
RULER's ``max_seq_lengths``; ``--limit N`` scores N samples per task and length (lm-eval generates 500
per length). The other RULER tasks download their haystacks or questions (Paul Graham essays from the
Hugging Face hub, SQuAD, HotpotQA) and any other lm-eval task its dataset: they run only with
``--allow-download``. ``--text-file`` (.txt: one document per paragraph; .json/.jsonl[.gz]: the
``--text-field`` of each record) adds the task ``local_text``: word and byte perplexity and bits per
byte from lm-eval's rolling log-likelihood.

Prints one JSON summary on stdout and writes it to ``--out`` (a .json path, or a folder that gets
``harness.json``):

    {"model_class": "CoMeTForCausalLM", "results": {"niah_single_1": {"4096": 0.85}, "local_text":
     {"word_perplexity": ..., "byte_perplexity": ..., "bits_per_byte": ...}}, "n_samples": {...}, ...}

With an active MLflow run (or ``MLFLOW_RUN_ID``) the scores are logged to it as
``eval/harness/<task>/<length or metric>`` and the JSON as an artifact. Needs ``pip install 'longctx[eval]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time

OFFLINE_RULER_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
_ESSAYS = "Paul Graham essays (Hugging Face dataset baber/paul_graham_essays) and nltk's punkt_tab"
DOWNLOADING_RULER_TASKS = {
    "niah_single_2": _ESSAYS, "niah_single_3": _ESSAYS, "niah_multikey_1": _ESSAYS,
    "niah_multivalue": _ESSAYS, "niah_multiquery": _ESSAYS,
    "ruler_qa_squad": "SQuAD 2.0 dev set (rajpurkar.github.io)",
    "ruler_qa_hotpot": "HotpotQA dev set (huggingface.co)",
    "ruler": "the essays, SQuAD and HotpotQA (the group runs every RULER task)",
    "longcxt": "the essays, SQuAD and HotpotQA (the tag covers every RULER task)",
}
# the shortest --lengths each task can fill (measured with the project's 8k BPE): below, lm-eval's RULER
# generators cannot fit the prompt, needles and answer; ruler_vt's then retries forever, ruler_cwe's asks
# for no words at all (and its scoring divides by zero)
MIN_LENGTH = {"niah_single_1": 512, "niah_multikey_2": 512, "niah_multikey_3": 512, "ruler_vt": 1024,
              "ruler_cwe": 2048, "ruler_fwe": 1024}
TEXT_TASK = "local_text"
DEFAULT_LENGTHS = "4096"
DEFAULT_OUT = "outputs/eval/harness"
INSTALL_FIX = "pip install 'longctx[eval]' (or bash cluster/install.sh --dev)"


class HarnessError(ValueError):
    """A bad `longctx eval harness` option, a task that needs a download, or lm-eval missing."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="model directory, models:/<name>@<alias> or runs:/<run_id>")
    parser.add_argument("--tasks", default="", metavar="LIST",
                        help="comma-separated lm-eval tasks; offline: " + ", ".join(OFFLINE_RULER_TASKS))
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS,
                        help=f"RULER max_seq_lengths in tokens, comma-separated [{DEFAULT_LENGTHS}]")
    parser.add_argument("--text-file", default=None, metavar="PATH",
                        help="also score rolling log-likelihood on a local .txt or .json/.jsonl[.gz] file "
                             f"(task {TEXT_TASK})")
    parser.add_argument("--text-field", default="text", help="the field of a JSON record holding its text [text]")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="samples per task (and per length for RULER) [all: 500 per RULER length]")
    parser.add_argument("--batch-size", type=int, default=1, help="lm-eval batch size [1]")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... [cuda if available, else cpu]")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 [auto: the saved one]")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="lm-eval's context limit; longer prompts are cut from the left [the model config's "
                             "max_position_embeddings]")
    parser.add_argument("--max-gen-toks", type=int, default=None, metavar="N",
                        help="tokens generated per answer [the task's: 128 for niah, 30 vt, 120 cwe, 50 fwe]")
    parser.add_argument("--allow-download", action="store_true",
                        help="let tasks that fetch their data (other RULER tasks, any lm-eval task) download it")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"a .json path, or a folder that gets harness.json [{DEFAULT_OUT}]")


# ---------------------------------------------------------------------------------------- options
def require_lm_eval() -> str:
    """lm-eval's version; a clear error when it (or RULER's generators' packages) is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessError(f"`longctx eval harness` needs EleutherAI's lm-evaluation-harness, which is not "
                           f"installed. Fix: {INSTALL_FIX}")
    from importlib.metadata import version

    return version("lm_eval")


def _require_ruler_packages() -> None:
    missing = [m for m in ("wonderwords", "nltk", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise HarnessError(f"RULER's data generators need {', '.join(missing)}, which is not installed. "
                           f"Fix: {INSTALL_FIX}")


def parse_tasks(text: str, allow_download: bool) -> list[str]:
    tasks = list(dict.fromkeys(t.strip() for t in str(text or "").split(",") if t.strip()))
    if allow_download:
        return tasks
    for task in tasks:
        if task == TEXT_TASK:
            raise HarnessError(f"--tasks {TEXT_TASK}: that task is built from --text-file. "
                               f"Fix: pass --text-file PATH instead")
        if task in DOWNLOADING_RULER_TASKS:
            raise HarnessError(f"--tasks {task}: this RULER task downloads {DOWNLOADING_RULER_TASKS[task]}, and "
                               f"this command runs offline. Fix: use an offline RULER task "
                               f"({', '.join(OFFLINE_RULER_TASKS)}), or pass --allow-download on a machine "
                               "with network access")
        if task not in OFFLINE_RULER_TASKS:
            raise HarnessError(f"--tasks {task}: not a task this command runs offline. Fix: use "
                               f"{', '.join(OFFLINE_RULER_TASKS)} (RULER, generated locally), --text-file PATH "
                               "for perplexity on your own text, or an lm-eval task name (`lm_eval ls tasks`) "
                               "with --allow-download, which lets it fetch its dataset")
    return tasks


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise HarnessError(f"--lengths {text!r} is not a comma-separated list of integers. "
                           "Fix: e.g. --lengths 4096,8192") from None
    bad = [n for n in lengths if n < 256]
    if not lengths or bad:
        raise HarnessError(f"--lengths {text!r}: RULER needs lengths of at least 256 tokens (its prompt, needle and "
                           "128 answer tokens must fit). Fix: e.g. --lengths 1024,4096")
    return sorted(set(lengths))


def text_task_config(path: str, field: str = "text") -> dict:
    """An lm-eval task config (a dict) scoring rolling log-likelihood on a local text file."""
    if not os.path.isfile(path):
        raise HarnessError(f"--text-file {path}: no such file. Fix: pass a .txt or .jsonl file")
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".json", ".jsonl")):
        import gzip

        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as fh:
                first = next((line for line in fh if line.strip()), "")
            record = json.loads(first) if first.lstrip().startswith("{") else None
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise HarnessError(f"--text-file {path}: cannot read it as JSON lines ({err}). "
                               "Fix: one JSON object per line, e.g. {\"text\": \"...\"}") from None
        if not isinstance(record, dict) or field not in record:
            raise HarnessError(f"--text-file {path}: its first record has no {field!r} field. "
                               f"Fix: pass --text-field with the field that holds the text")
        source = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": path}}}
        target = "{{" + field + "}}"
    elif name.endswith(".txt") or "." not in os.path.basename(name):
        source = {"dataset_path": "text", "dataset_kwargs": {"data_files": {"test": path}, "sample_by": "paragraph"}}
        target = "{{text}}"
    else:
        raise HarnessError(f"--text-file {path}: not a .txt, .json or .jsonl[.gz] file. Fix: convert it to one")
    return {"task": TEXT_TASK, **source, "output_type": "loglikelihood_rolling", "test_split": "test",
            "doc_to_text": "", "doc_to_target": target,
            "metric_list": [{"metric": "word_perplexity", "aggregation": "weighted_perplexity",
                             "higher_is_better": False},
                            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity",
                             "higher_is_better": False},
                            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}],
            "metadata": {"version": 1.0}}


# ---------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def _no_nltk_download(log):
    """lm-eval's RULER module asks nltk to download punkt_tab on import; the offline tasks never use it
    (only the essay haystacks do), so the request is answered locally instead of going to the network."""
    try:
        import nltk
    except ImportError:
        yield
        return
    original = nltk.download

    def refuse(info_or_id=None, *args, **kwargs):
        log(f"skipped nltk.download({info_or_id!r}): the offline RULER tasks do not use it")
        return False

    nltk.download = refuse
    try:
        yield
    finally:
        nltk.download = original


def _ruler_dir() -> str:
    import lm_eval

    return os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "ruler")


def _task_manager(metadata: dict, allow_download: bool):
    from lm_eval.tasks import TaskManager

    if allow_download:
        return TaskManager(metadata=metadata)
    # only RULER's folder: indexing every lm-eval task takes seconds and none of them runs offline
    return TaskManager(include_path=_ruler_dir(), include_defaults=False, metadata=metadata)


def _scores(task_results: dict) -> dict:
    """{"metric": value} from lm-eval's {"metric,filter": value, "metric_stderr,filter": ...}."""
    out = {}
    for key, value in task_results.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else f"{metric},{filt}"] = float(value)
    return out


def _evaluate(lm, tasks: list, task_manager, limit, gen_kwargs, what: str) -> dict:
    import lm_eval

    try:
        return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=limit,
                                       bootstrap_iters=0, gen_kwargs=gen_kwargs, log_samples=True)
    except HarnessError:
        raise
    except Exception as err:  # noqa: BLE001 - one line for the user, whatever lm-eval raised
        first = (str(err).strip().splitlines() or [""])[0]
        raise HarnessError(f"lm-eval failed on {what}: {type(err).__name__}: {first}. Fix: see the message; "
                           "a RULER length too short for the task's prompt needs larger --lengths") from None


def _build_lm(directory: str, uri: str, args):
    import framework  # noqa: F401 - registers CoMeT with AutoConfig / AutoModelForCausalLM
    import framework.models.swat  # noqa: F401 - registers SWAT the same way
    from lm_eval.models.huggingface import HFLM

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        lm = HFLM(pretrained=directory, backend="causal", device=device, batch_size=args.batch_size,
                  dtype=args.dtype, max_length=args.max_length)
    except (OSError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise HarnessError(f"--model {uri}: lm-eval could not load {directory} ({type(err).__name__}: {first}). "
                           "Fix: pass a folder written by save_pretrained(dir, tokenizer=tokenizer)") from None
    return lm, device


def _examples(result: dict, task: str) -> list:
    out = []
    for sample in (result.get("samples") or {}).get(task, [])[:1]:
        response = sample.get("filtered_resps") or sample.get("resps") or [""]
        while isinstance(response, list) and response:
            response = response[0]
        out.append({"length": sample.get("doc", {}).get("max_length"), "target": sample.get("target"),
                    "response": str(response)[:200]})
    return out


def harness_report(uri: str, args, log) -> dict:
    from framework.eval.model_uri import ModelURIError, resolve_model_dir
    from framework.models.loading import is_autoencoder_dir, is_compressor_dir

    version = require_lm_eval()
    tasks = parse_tasks(args.tasks, args.allow_download)
    if not tasks and not args.text_file:
        raise HarnessError("nothing to evaluate. Fix: pass --tasks (e.g. --tasks niah_single_1) and/or "
                           "--text-file PATH")
    lengths = parse_lengths(args.lengths) if tasks else []
    short = [t for t in tasks if t in MIN_LENGTH and lengths[0] < MIN_LENGTH[t]]
    if short:
        need = "; ".join(f"{t} needs {MIN_LENGTH[t]}" for t in short)
        raise HarnessError(f"--lengths {lengths[0]} is too short: {need} tokens or more (the prompt, needles and "
                           f"answer must fit). Fix: e.g. --lengths {max(MIN_LENGTH[t] for t in short)}")
    text_task = text_task_config(args.text_file, args.text_field) if args.text_file else None
    if args.limit is not None and args.limit < 1:
        raise HarnessError(f"--limit {args.limit}: need at least 1 sample. Fix: e.g. --limit 20")
    if args.batch_size < 1:
        raise HarnessError(f"--batch-size {args.batch_size}: need at least 1. Fix: e.g. --batch-size 1")
    ruler = [t for t in tasks if t in OFFLINE_RULER_TASKS or t in DOWNLOADING_RULER_TASKS]
    if ruler:
        _require_ruler_packages()
    if tasks and args.allow_download:
        available = _task_manager({}, True).all_tasks
        unknown = [t for t in tasks if t not in available]
        if unknown:
            raise HarnessError(f"--tasks {','.join(unknown)}: lm-eval {version} has no such task. "
                               "Fix: pick names from `lm_eval ls tasks`")
    directory = resolve_model_dir(uri, args.tracking_uri)
    if is_compressor_dir(directory) or is_autoencoder_dir(directory):
        raise ModelURIError(f"--model {uri} holds a RAM/COMI compressor or a context autoencoder, not a causal LM. "
                            "Fix: evaluate it with `longctx eval qa` or `longctx eval autoencoder`")

    started = time.perf_counter()
    log(f"loading {uri} with lm-eval {version}")
    with contextlib.redirect_stdout(sys.stderr):
        lm, device = _build_lm(directory, uri, args)
    model_class = type(lm.model).__name__
    log(f"loaded {model_class} ({getattr(lm.model.config, 'model_type', '?')}); lm-eval max_length {lm.max_length}")
    if lengths and max(lengths) > lm.max_length:
        log(f"RULER prompts of {max(lengths)} tokens exceed max_length {lm.max_length}: lm-eval cuts them from the "
            "left (pass --max-length to change it)")
    gen_kwargs = {"max_gen_toks": args.max_gen_toks} if args.max_gen_toks else None
    metadata = {"pretrained": directory, "tokenizer": directory}
    results, n_samples, examples = {}, {}, {}
    guard = contextlib.nullcontext() if args.allow_download else _no_nltk_download(log)
    with guard, contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON summary
        if tasks:
            for i, length in enumerate(lengths):  # one run per length, so --limit counts samples of each length
                now = tasks if i == 0 else ruler  # other lm-eval tasks do not depend on the length: run them once
                log(f"lm-eval: {','.join(now)} at {length} tokens")
                manager = _task_manager({**metadata, "max_seq_lengths": [length]}, args.allow_download)
                res = _evaluate(lm, now, manager, args.limit, gen_kwargs, f"{','.join(now)} at {length} tokens")
                for task in now:
                    for metric, value in _scores(res["results"].get(task, {})).items():
                        if task in ruler and (not metric.isdigit() or int(metric) != length):
                            continue  # RULER reports -1 for the lengths of its default grid it did not run
                        results.setdefault(task, {})[metric] = value
                    effective = res.get("n-samples", {}).get(task, {}).get("effective")
                    n_samples.setdefault(task, {})[str(length)] = effective
                    examples.setdefault(task, []).extend(_examples(res, task))
                if not ruler:
                    break
        if text_task is not None:
            log(f"lm-eval: rolling log-likelihood on {args.text_file}")
            res = _evaluate(lm, [text_task], _task_manager(metadata, False), args.limit, None, args.text_file)
            results[TEXT_TASK] = _scores(res["results"].get(TEXT_TASK, {}))
            n_samples[TEXT_TASK] = res.get("n-samples", {}).get(TEXT_TASK, {}).get("effective")
    return {"model": uri, "model_dir": directory, "model_class": model_class,
            "model_type": getattr(lm.model.config, "model_type", None), "tasks": tasks,
            "lengths": lengths if ruler else [], "text_file": args.text_file, "limit": args.limit,
            "batch_size": args.batch_size, "device": device, "max_length": lm.max_length,
            "max_gen_toks": args.max_gen_toks, "results": results, "n_samples": n_samples, "examples": examples,
            "lm_eval_version": version, "seconds": round(time.perf_counter() - started, 2)}


def _out_path(out: str) -> tuple[str, str]:
    if out.endswith(".json"):
        return os.path.dirname(out) or ".", os.path.basename(out)
    return out, "harness.json"


def run(args: argparse.Namespace) -> int:
    from framework.eval.reporting import log_to_active_run, metric_key, print_summary, progress, write_summary

    summary = harness_report(args.model, args, progress)
    out_dir, name = _out_path(args.out)
    path = write_summary(summary, out_dir, name)
    summary["out"] = path
    metrics = {metric_key("eval/harness", task, metric): value for task, scores in summary["results"].items()
               for metric, value in scores.items() if math.isfinite(value)}
    run_id = log_to_active_run(metrics, [path], "eval/harness")
    if run_id:
        summary["mlflow_run_id"] = run_id
    print_summary(summary)
    return 0
