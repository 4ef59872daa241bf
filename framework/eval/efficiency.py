"""Prefill time, decode ms/token and peak memory against context length, on one base model.

Methods (--methods), all on the same weights:
  comet    the CoMeT model: prefill streams the prompt through ``model.stream().feed`` chunk by
           chunk, then decodes one token at a time on the same stream (constant memory).
  full     the wrapped Hugging Face backbone with full causal attention: one forward over the
           prompt with use_cache=True, then token-by-token decoding on the KV cache.
  sliding  the same backbone weights (shared, not copied) in a model whose every layer attends to
           the last --window tokens only: the masks of prefill and decode are sliding-window masks,
           and the KV cache keeps only the last window-1 tokens (transformers' sliding cache layers).
           The prefill feeds the prompt in blocks of --window tokens on that cache (one forward over
           the whole prompt would build a length x length mask): its memory is bounded by the
           window, like its decode. The blocked prefill gives the one-pass prefill's logits.
           Supported for llama, mistral, qwen2 and qwen3 backbones (framework.models.sliding: a llama
           backbone runs as the identical mistral architecture); other families are skipped with the reason.

Decoding is greedy; logits are computed for the last position only (``logits_to_keep=1`` for the
backbone, ``logits="last"`` for CoMeT). Prompts are random token ids (speed does not depend on
content). Before measuring, each method runs once on a short prompt (warm-up). With --repeats R the
median time of R runs is reported and the largest memory.

Memory (``memory_metric`` in the JSON says which):
  cuda  peak_cuda_allocated_above_start_mb: torch.cuda.max_memory_allocated during prefill+decode
        minus what was allocated before (the weights): the cache and activations.
  cpu   peak_rss_delta_mb: the process's peak resident set size (VmHWM, reset through
        /proc/self/clear_refs) during prefill+decode minus its RSS before, after returning freed
        heap to the OS (malloc_trim). Linux only; elsewhere it is null.

A length is skipped (``"skipped": reason``) when full attention would go past the backbone's
max_position_embeddings, when a CPU run's KV cache and masks would not fit the available memory,
or when CUDA runs out of memory.

--tiny builds a random 2-layer qwen3 CoMeT model on the project tokenizer for a quick look.

stdout: {"device", "base", "model", "memory_metric", "results": [{"method", "length", "prefill_s",
"decode_ms_per_token", "peak_mem_mb"} or {"method", "length", "skipped"}, ...], "files", ...}.
--out gets efficiency.json and efficiency_prefill.png, efficiency_decode.png, efficiency_memory.png;
with an active MLflow run, metrics bench/efficiency/<method>/len_<L>/<quantity> and the files are logged.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

from framework.eval.streaming import open_stream
from framework.models.sliding import SlidingWindowError, sliding_window_model

METHODS = ("comet", "full", "sliding")
DEFAULT_OUT = os.path.join("outputs", "bench", "efficiency")
DEFAULT_LENGTHS = "1024,2048,4096,8192,16384"
TINY_LENGTHS = "256,512,1024"
DEFAULT_WINDOW, TINY_WINDOW = 4096, 128
WARMUP_LENGTH = 32

TINY_COMET = {"chunk_size": 128, "global_mem_size": 8, "temp_stride": 8, "temp_budget": 64}


class EfficiencyArgumentError(ValueError):
    """A bench option is invalid; the message names it and the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="URI", default=None,
                       help="CoMeT model (its backbone is the base): a directory, models:/<name>@<alias> or runs:/<id>")
    which.add_argument("--tiny", action="store_true", help="a tiny random qwen3 CoMeT model (quick look, no download)")
    parser.add_argument("--lengths", default=None,
                        help=f"comma-separated prompt lengths in tokens (default {DEFAULT_LENGTHS}; "
                             f"{TINY_LENGTHS} with --tiny)")
    parser.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded after the prompt (default 32)")
    parser.add_argument("--window", type=int, default=None,
                        help=f"sliding-window size in tokens (default {DEFAULT_WINDOW}; {TINY_WINDOW} with --tiny)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method and length; medians reported")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype (default: as saved)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts and the --tiny model")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")


# ---------------------------------------------------------------------------------------- options
def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise EfficiencyArgumentError(f"--lengths {text!r}: not a comma-separated list of integers. "
                                      "Fix: pass e.g. --lengths 1024,2048,4096") from None
    if not lengths or any(n < 1 for n in lengths):
        raise EfficiencyArgumentError(f"--lengths {text!r}: give at least one length, each >= 1 token. "
                                      "Fix: pass e.g. --lengths 1024,2048,4096")
    return sorted(set(lengths))


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise EfficiencyArgumentError(f"--methods {text!r}: unknown {unknown or 'empty list'}. "
                                      f"Fix: use a comma-separated subset of {','.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _check_counts(args) -> None:
    for flag, value, low in (("--decode-tokens", args.decode_tokens, 1), ("--repeats", args.repeats, 1),
                             ("--window", args.window, 1)):
        if value is not None and value < low:
            raise EfficiencyArgumentError(f"{flag} {value}: must be at least {low}. "
                                          f"Fix: pass e.g. {flag} {max(low, 32)}")


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EfficiencyArgumentError(f"--device {name!r} is not a device. "
                                      "Fix: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EfficiencyArgumentError(f"--device {name}: CUDA is not available here. Fix: use --device cpu or auto")
    return device


# ---------------------------------------------------------------------------------------- models
def build_tiny_model(seed: int = 0, comet: dict | None = None):
    """A tiny random qwen3 CoMeT model on the project tokenizer: (model, tokenizer)."""
    import torch

    from framework.job import tiny_qwen3
    from framework.methods.base_model import build_base_model, load_tokenizer
    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    cfg = tiny_qwen3()
    tokenizer = load_tokenizer(cfg)
    base = build_base_model(cfg, vocab_size=len(tokenizer), seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CoMeTForCausalLM.from_base(base, CoMeTConfig(**(comet or TINY_COMET)))
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------------------- runners
class StreamRunner:
    """Prefill and greedy decode on a fresh stream of the model per prompt (``framework.eval.streaming``): a
    CoMeT model streams chunk by chunk; a transformers causal LM prefills with use_cache=True, then decodes on
    its KV cache, the prompt fed in one forward (block None) or in blocks of that many tokens (the sliding
    window's)."""

    def __init__(self, model, block: int | None = None):
        self.model, self.block, self.stream = model, block, None

    @property
    def cache(self):
        """The KV cache of a transformers LM's stream (None for a CoMeT model, or before a prefill)."""
        return getattr(self.stream, "cache", None)

    def prefill(self, ids):
        self.stream = open_stream(self.model, self.block)
        return self.stream.feed(ids, logits="last")[:, -1].argmax(-1)

    def step(self, token):
        return self.stream.feed(token[:, None], logits="last")[:, -1].argmax(-1)

    def close(self):
        self.stream = None


HFRunner = StreamRunner  # the name of the transformers causal LM runner (full and sliding) before StreamRunner


# ---------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block of code above what it started with, in MB (None where unmeasurable)."""

    def __init__(self, device):
        self.device = device
        self.metric = ("peak_cuda_allocated_above_start_mb" if device.type == "cuda" else "peak_rss_delta_mb")
        self.peak_mb = None

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self):
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS, so RSS starts low
        except (OSError, AttributeError):
            pass
        self._start = self._status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._start is not None:
            peak = self._status_kb("VmHWM")
            self.peak_mb = None if peak is None else max(peak - self._start, 0) / 1024
        return False


def _available_cpu_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _estimate_bytes(method: str, backbone, length: int, window: int) -> int:
    """A lower bound on what one prompt of `length` tokens needs beyond the weights."""
    cfg = backbone.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    width = backbone.dtype.itemsize if hasattr(backbone.dtype, "itemsize") else 4
    if method == "full":
        return 2 * cfg.num_hidden_layers * kv_heads * head_dim * length * width
    if method == "sliding":  # the window's K/V per layer, plus one block's K/V and mask (blocked prefill)
        return 2 * cfg.num_hidden_layers * kv_heads * head_dim * 2 * window * width + 2 * window * window
    return 0


def skip_reason(method: str, backbone, length: int, decode_tokens: int, window: int, device) -> str | None:
    limit = getattr(backbone.config, "max_position_embeddings", None)
    if method == "full" and limit and length + decode_tokens > limit:
        return (f"length {length} + {decode_tokens} decode tokens exceeds the backbone's max_position_embeddings="
                f"{limit}: full attention has no trained positions beyond it")
    if device.type == "cpu":
        available, need = _available_cpu_bytes(), _estimate_bytes(method, backbone, length, window)
        if available is not None and need > 0.8 * available:
            return (f"needs at least {need / 2**30:.1f} GiB for the cache and masks; "
                    f"{available / 2**30:.1f} GiB of memory is available")
    return None


# ---------------------------------------------------------------------------------------- measuring
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_once(runner, ids, decode_tokens: int, device) -> dict:
    import torch

    with torch.no_grad(), PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        token = runner.prefill(ids)
        _sync(device)
        t1 = time.perf_counter()
        for _ in range(decode_tokens):
            token = runner.step(token)
        _sync(device)
        t2 = time.perf_counter()
        runner.close()
    return {"prefill_s": t1 - t0, "decode_ms_per_token": (t2 - t1) * 1000 / decode_tokens,
            "peak_mem_mb": mem.peak_mb, "memory_metric": mem.metric}


def measure(runner, ids, decode_tokens: int, repeats: int, device) -> dict:
    runs = [measure_once(runner, ids, decode_tokens, device) for _ in range(repeats)]
    peaks = [r["peak_mem_mb"] for r in runs if r["peak_mem_mb"] is not None]
    return {"prefill_s": statistics.median(r["prefill_s"] for r in runs),
            "decode_ms_per_token": statistics.median(r["decode_ms_per_token"] for r in runs),
            "peak_mem_mb": max(peaks) if peaks else None}


def is_oom(err: BaseException) -> bool:
    """Whether `err` is the device (or the host) running out of memory."""
    import torch

    return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


def benchmark(model, methods, lengths, decode_tokens: int, window: int, repeats: int, seed: int, device,
              log=lambda message: None) -> list[dict]:
    """One result per method and length: timings and memory, or {"skipped": reason}."""
    import torch

    backbone = model.backbone
    runners, unavailable = {}, {}
    for method in methods:
        if method == "comet":
            runners[method] = StreamRunner(model)
        elif method == "full":
            runners[method] = StreamRunner(backbone)
        else:
            try:
                runners[method] = StreamRunner(sliding_window_model(backbone, window).eval(), block=window)
            except SlidingWindowError as err:
                unavailable[method] = str(err)
                log(f"sliding skipped: {err}")
    vocab = backbone.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(seed)
    for method, runner in runners.items():  # warm-up: kernels, allocator, lazy initialisation
        measure_once(runner, torch.randint(0, vocab, (1, WARMUP_LENGTH), generator=gen).to(device), 2, device)

    results = []
    for length in lengths:
        ids = torch.randint(0, vocab, (1, length), generator=gen).to(device)
        for method in methods:
            row = {"method": method, "length": length}
            reason = unavailable.get(method) or skip_reason(method, backbone, length, decode_tokens, window, device)
            if reason is None:
                log(f"{method}: {length} tokens + {decode_tokens} decoded")
                try:
                    row.update(measure(runners[method], ids, decode_tokens, repeats, device))
                except (RuntimeError, MemoryError) as err:
                    if not is_oom(err):
                        raise
                    runners[method].close()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    reason = f"out of memory on {device}: {str(err).splitlines()[0]}"
            if reason is not None:
                row["skipped"] = reason
                log(f"{method}: {length} tokens skipped ({reason})")
            results.append(row)
    return results


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _plots(results, out_dir: str, base: str) -> list[str]:
    from framework.eval import plots

    paths = []
    for key, name, label, logy in (("prefill_s", "prefill", "prefill time (s)", True),
                                   ("decode_ms_per_token", "decode", "decode time (ms/token)", False),
                                   ("peak_mem_mb", "memory", "peak memory (MB)", False)):
        series = {}
        for row in results:
            if "skipped" not in row and row.get(key) is not None:
                xs, ys = series.setdefault(row["method"], ([], []))
                xs.append(row["length"])
                ys.append(row[key])
        path = os.path.join(out_dir, f"efficiency_{name}.png")
        with warnings.catch_warnings():  # every length skipped: an empty figure, without a legend warning
            warnings.simplefilter("ignore", UserWarning)
            plots.line_plot(series, path, title=f"{label} vs context length ({base})",
                            xlabel="context length (tokens)", ylabel=label, logx=True, logy=logy and bool(series))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    import torch

    from framework.eval.reporting import (log_to_active_run, machine_info, metric_key, print_summary, progress,
                                          write_summary)

    _check_counts(args)
    lengths = parse_lengths(args.lengths or (TINY_LENGTHS if args.tiny else DEFAULT_LENGTHS))
    methods = parse_methods(args.methods)
    window = args.window or (TINY_WINDOW if args.tiny else DEFAULT_WINDOW)
    device = pick_device(args.device)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)

    if args.tiny:
        progress("building a tiny random CoMeT model")
        model, _ = build_tiny_model(args.seed)
        model = model.to(device=device, dtype=dtype or model.dtype)
        model_name = "tiny"
    else:
        from framework.eval.model_uri import load_model

        progress(f"loading {args.model}")
        model = load_model(args.model, tracking_uri=args.tracking_uri, device=str(device), dtype=dtype).model
        model_name = args.model
    backbone = model.backbone
    base = f"{backbone.config.model_type}:{getattr(backbone.config, 'name_or_path', '') or 'random'}"

    results = benchmark(model, methods, lengths, args.decode_tokens, window, args.repeats, args.seed, device,
                        log=progress)
    summary = {"device": _device_name(device), "base": base, "model": model_name, "dtype": str(model.dtype),
               "methods": methods, "lengths": lengths, "decode_tokens": args.decode_tokens, "window": window,
               "repeats": args.repeats, "chunk_size": model.config.chunk_size,
               "memory_metric": PeakMemory(device).metric, "results": results,
               "machine": machine_info(_device_name(device))}
    json_path = os.path.join(args.out, "efficiency.json")
    figures = _plots(results, args.out, base)
    summary["files"] = {"summary": json_path, "plots": figures}
    write_summary(summary, args.out, "efficiency.json")

    metrics = {}
    for row in results:
        for key in ("prefill_s", "decode_ms_per_token", "peak_mem_mb"):
            if row.get(key) is not None:
                metrics[metric_key("bench", "efficiency", row["method"], f"len_{row['length']}", key)] = row[key]
    run_id = log_to_active_run(metrics, [json_path, *figures], "bench/efficiency")
    if run_id:
        progress(f"logged to MLflow run {run_id}")
    print_summary(summary)
    return 0
