"""CoMeT speed and memory at the paper-shaped configuration: prefill, decoding, training. Prints one JSON object.

    python benchmarks/comet_speed.py                          # a few minutes on 2 CPU cores
    python benchmarks/comet_speed.py --profile --out benchmarks/results/comet_speed.json   # the docs' figures
    python benchmarks/comet_speed.py --prefill-chunks 2 --decode-tokens 16 --train-chunks 2 --no-memory   # quicker

The backbone is a random Qwen3 (hidden 256, intermediate 768, 4 layers, 4 heads, 2 KV heads, head_dim 64,
vocab 32768, fp32, sdpa), the shape the official code was timed at; CoMeT uses the paper's configuration (chunk
2048, global memory 512, stride 8, temporary budget 2048). Nothing is downloaded.

- prefill: `stream.feed` of --prefill-chunks chunks plus --open-tokens tokens, seconds per 2048-token chunk;
- decode: greedy tokens fed one at a time into the open chunk after that prefix, ms per token (no chunk closes
  in the timed loop: the open chunk has room); beside it the backbone alone, decoding with a plain KV cache of as
  many keys as CoMeT attends over (memory rows + the open chunk's rows): one backbone step, the floor;
- close: the one token that fills a chunk and the next, which closes it (trailing compression token, readouts,
  memory update) and opens a new one (memory K/V), in seconds; spread over a chunk it adds close_s / 2048 per token;
- training: forward + backward over --train-chunks chunks with activation checkpointing, seconds per chunk.

Memory (skipped with --no-memory) is measured after the timings, each figure in a fresh child process (this
script run again with a hidden --child option), as the peak resident set above a baseline: the RSS (VmRSS) at
that point, where the peak (VmHWM) is reset, so each peak is that measurement's own. Not getrusage's ru_maxrss,
which a child inherits from this process and which cannot be reset; it is the fallback where there is no /proc
(peak_measure in the JSON says which was used).
- training.peak_above_model_mb: the model of the training phase is built and takes one 64-token warm-up step
  (forward + backward, gradients zeroed in place, so the gradient buffers exist); then one step over
  --train-chunks chunks: its peak RSS minus the RSS after the warm-up (training.rss_after_warmup_mb);
- inference_memory: per --memory-lengths length [32768,131072; 256,1024 with --tiny], the model is built and
  the prompt fed to `stream.feed` (logits="last") in pieces of 4 chunks, made piece by piece, so nothing holds
  the whole prompt: peak RSS minus the RSS after loading; growth_mb is the longest length's figure minus the
  shortest's (flat memory: about 0).
On a CUDA --device the children also report the CUDA allocator's peak above the same points (cuda_*_mb).

With --profile each phase runs once more under torch.profiler (the timings above stay unprofiled) and its top
entries by self CPU time go to stderr and into the JSON. --out also writes the JSON to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PAPER = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, vocab=32768,
             comet=dict(chunk_size=2048, global_mem_size=512, temp_stride=8, temp_budget=2048))
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab=512,
            comet=dict(chunk_size=64, global_mem_size=8, temp_stride=8, temp_budget=32))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefill-chunks", type=int, default=9,
                   help="whole chunks before decoding [9: the temporary memory is full from the 9th chunk on]")
    p.add_argument("--open-tokens", type=int, default=None,
                   help="tokens of the open chunk before decoding [1024; 16 with --tiny]")
    p.add_argument("--decode-tokens", type=int, default=None, help="[64; 8 with --tiny]")
    p.add_argument("--train-chunks", type=int, default=8, help="chunks in the training step (0 skips training)")
    p.add_argument("--threads", type=int, default=None, help="torch threads [every core]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference", action="store_true", help="neutral_start=False (no gated text pass)")
    p.add_argument("--tiny", action="store_true", help="a tiny backbone and chunks of 64 (for tests)")
    p.add_argument("--profile", action="store_true", help="also profile each phase (top entries to stderr)")
    p.add_argument("--profile-rows", type=int, default=12)
    p.add_argument("--memory-lengths", default=None,
                   help="prompt lengths of the inference memory, comma-separated [32768,131072; 256,1024 with --tiny]")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements (no child processes)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--child", choices=["training-memory", "inference-memory"], help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.open_tokens is None:
        args.open_tokens = 16 if args.tiny else 1024
    if args.decode_tokens is None:
        args.decode_tokens = 8 if args.tiny else 64
    if args.memory_lengths is None:
        args.memory_lengths = "256,1024" if args.tiny else "32768,131072"
    try:
        args.memory_lengths = [int(x) for x in args.memory_lengths.split(",") if x.strip()]
    except ValueError:
        p.error(f"--memory-lengths takes comma-separated token counts, not {args.memory_lengths!r}")
    if any(n < 1 for n in args.memory_lengths):
        p.error("--memory-lengths must be positive")
    return args


def machine(torch, device: str) -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": device, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg_1m_at_start": load}


def build_backbone(shape: dict, device: str):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=shape["vocab"], max_position_embeddings=1 << 21,
                      **{k: v for k, v in shape.items() if k not in ("vocab", "comet")})
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg).to(device).eval()


class Clock:
    def __init__(self, torch, device: str):
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __enter__(self):
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start


def top_entries(prof, rows: int, label: str) -> list:
    """The top `rows` operators by self CPU time, printed to stderr and returned as dicts."""
    averages = prof.key_averages()
    print(f"--- {label}\n" + averages.table(sort_by="self_cpu_time_total", row_limit=rows), file=sys.stderr)
    ranked = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3), "calls": e.count} for e in ranked]


def profiled(torch, fn, rows: int, label: str) -> list:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
    return top_entries(prof, rows, label)


# ---- memory: each figure in a fresh child process (this script with --child), so each peak is its own ----------

def _status_mb(field: str) -> float | None:
    """A `VmXXX` line of /proc/self/status in MB; None where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB; its peak so far where there is no /proc."""
    now = _status_mb("VmRSS")
    return _ru_maxrss_mb() if now is None else now


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) since `reset_peak_rss()`, in MB.

    Not ru_maxrss where /proc exists: a process started by subprocess inherits its parent's peak in ru_maxrss
    (exec keeps the old address space's high-water mark), and ru_maxrss cannot be reset; VmHWM is this
    address space's own, and writing 5 to /proc/self/clear_refs resets it to the RSS now.
    """
    peak = _status_mb("VmHWM")
    return _ru_maxrss_mb() if peak is None else peak


def reset_peak_rss() -> str:
    """Restart the peak at the RSS now; returns how `peak_rss_mb()` measures from here (into the JSON)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM, reset at the baseline"
    except OSError:
        return "VmHWM since the process started" if _status_mb("VmHWM") is not None else \
            "ru_maxrss since the process started"


class CudaPeak:
    """The CUDA allocator's peak above the allocation at `start()`, in MB; nothing on CPU."""

    def __init__(self, torch, device: str):
        self.torch, self.on = torch, device.startswith("cuda")

    def start(self):
        if self.on:
            self.torch.cuda.synchronize()
            self.base = self.torch.cuda.memory_allocated()
            self.torch.cuda.reset_peak_memory_stats()

    def above(self) -> float:
        self.torch.cuda.synchronize()
        return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20


def child_training_memory(args) -> dict:
    """The training phase's model, a 64-token warm-up step, then one step over --train-chunks chunks."""
    import gc

    import torch

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    shape = TINY if args.tiny else PAPER
    vocab, chunk = shape["vocab"], shape["comet"]["chunk_size"]
    model = CoMeTForCausalLM.from_base(build_backbone(shape, args.device), CoMeTConfig(
        **shape["comet"], neutral_start=not args.reference, gradient_checkpointing=True)).train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, args.train_chunks * chunk), generator=gen).to(args.device)
    gc.collect()
    after_build = rss_mb()
    warm = ids[:, :64]
    model(input_ids=warm, labels=warm, return_logits=False).loss.backward()
    model.zero_grad(set_to_none=False)  # the gradient buffers exist: the model's own training memory
    gc.collect()
    measure = reset_peak_rss()
    after_warmup = rss_mb()  # after the reset, so the peak from here is never below it
    cuda = CudaPeak(torch, args.device)
    cuda.start()
    model(input_ids=ids, labels=ids, return_logits=False).loss.backward()
    out = {"rss_after_build_mb": after_build, "rss_after_warmup_mb": after_warmup, "peak_measure": measure}
    if cuda.on:
        out["cuda_peak_above_model_mb"] = cuda.above()
    peak = peak_rss_mb()
    out.update(peak_rss_mb=peak, peak_above_model_mb=peak - after_warmup)
    return out


def child_inference_memory(args) -> dict:
    """The prefill model, then a prompt of --length tokens fed in pieces of 4 chunks, each made when it is fed."""
    import gc

    import torch

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    shape = TINY if args.tiny else PAPER
    vocab, chunk = shape["vocab"], shape["comet"]["chunk_size"]
    model = CoMeTForCausalLM.from_base(build_backbone(shape, args.device), CoMeTConfig(
        **shape["comet"], neutral_start=not args.reference)).eval()
    gc.collect()
    measure = reset_peak_rss()
    after_load = rss_mb()  # after the reset, so the peak from here is never below it
    cuda = CudaPeak(torch, args.device)
    cuda.start()
    piece, gen = 4 * chunk, torch.Generator().manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        stream = model.stream()
        for begin in range(0, args.length, piece):
            ids = torch.randint(0, vocab, (1, min(piece, args.length - begin)), generator=gen).to(args.device)
            stream.feed(ids, logits="last")
    out = {"tokens": args.length, "piece_tokens": piece, "rss_after_load_mb": after_load, "peak_measure": measure}
    if cuda.on:
        out["cuda_peak_above_load_mb"] = cuda.above()
    peak = peak_rss_mb()
    out.update(peak_rss_mb=peak, peak_above_load_mb=peak - after_load, prefill_seconds=time.perf_counter() - start)
    return out


def child(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "training-memory":
        return child_training_memory(args)
    if args.length < 1:
        raise SystemExit("--child inference-memory needs --length N")
    return child_inference_memory(args)


def spawn(args, kind: str, *extra: str) -> dict:
    """Run this script as `--child kind` in a fresh process; its last stdout line is its JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--device", args.device,
           "--train-chunks", str(args.train_chunks), *extra]
    cmd += (["--tiny"] if args.tiny else []) + (["--reference"] if args.reference else []) + (
        ["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            out = json.loads(lines[-1])
            print(f"[comet_speed] {kind} {' '.join(extra)}: {json.dumps(out)}", file=sys.stderr, flush=True)
            return out
        except json.JSONDecodeError:
            pass
    how = (f"was killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else
           f"exited with status {proc.returncode}" if proc.returncode else "printed no JSON line")
    tail = "\n".join(proc.stderr.strip().splitlines()[-20:]) or "(empty)"
    raise SystemExit(f"comet_speed: the memory child `{' '.join(cmd[1:])}` {how}; its stderr ends with:\n{tail}")


def memory(args, result: dict) -> None:
    """The memory figures, one child process each, into `result` (training, inference_memory)."""
    if args.train_chunks:
        result["training"].update(spawn(args, "training-memory"))
    if args.memory_lengths:
        rows = [spawn(args, "inference-memory", "--length", str(n)) for n in sorted(set(args.memory_lengths))]
        lo, hi = rows[0], rows[-1]
        result["inference_memory"] = {"rows": rows, "shortest": lo["tokens"], "longest": hi["tokens"],
                                      "growth_mb": hi["peak_above_load_mb"] - lo["peak_above_load_mb"]}
        if "cuda_peak_above_load_mb" in lo:
            result["inference_memory"]["cuda_growth_mb"] = hi["cuda_peak_above_load_mb"] - lo["cuda_peak_above_load_mb"]


def run(args) -> dict:
    import torch

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = TINY if args.tiny else PAPER
    vocab, chunk = shape["vocab"], shape["comet"]["chunk_size"]
    decoded = args.open_tokens + 2 + args.decode_tokens * (2 if args.profile else 1)  # warm-up, (profiled) loop
    if args.open_tokens < 1 or args.decode_tokens < 1 or decoded >= chunk:
        raise SystemExit(f"--open-tokens + 2 + --decode-tokens (twice with --profile) must stay below the chunk "
                         f"size {chunk}, both at least 1: decoding stays in the open chunk")
    device = args.device
    clock = lambda: Clock(torch, device)  # noqa: E731
    result = {"benchmark": "comet_speed", "machine": machine(torch, device),
              "backbone": ("tiny " if args.tiny else "") + "random Qwen3: " + ", ".join(
                  f"{k} {v}" for k, v in shape.items() if k != "comet") + ", fp32, sdpa",
              "comet": dict(shape["comet"], neutral_start=not args.reference),
              "sizes": {"prefill_chunks": args.prefill_chunks, "open_tokens": args.open_tokens,
                        "decode_tokens": args.decode_tokens, "train_chunks": args.train_chunks}}
    profiles = {}
    config = CoMeTConfig(**shape["comet"], neutral_start=not args.reference)
    model = CoMeTForCausalLM.from_base(build_backbone(shape, device), config).eval()
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (1, args.prefill_chunks * chunk + args.open_tokens), generator=gen).to(device)

    # prefill
    with torch.no_grad():
        stream = model.stream()
        with clock() as c:
            logits = stream.feed(prefix, logits="last")
    n_chunks = prefix.shape[1] / chunk
    result["prefill"] = {"tokens": prefix.shape[1], "seconds": c.seconds, "s_per_chunk": c.seconds / n_chunks}
    if args.profile:
        some = prefix[:, :min(args.prefill_chunks, 2) * chunk + 1]
        with torch.no_grad():
            profiles["prefill"] = profiled(torch, lambda: model.stream().feed(some, logits="last"), args.profile_rows,
                                           f"prefill ({some.shape[1]} tokens, a fresh stream)")

    # decode
    def decode(stream, logits, steps):
        for _ in range(steps):
            logits = stream.feed(logits[:, -1].argmax(-1, keepdim=True), logits="last")
        return logits

    with torch.no_grad():
        logits = decode(stream, logits, 2)  # warm-up
        with clock() as c:
            logits = decode(stream, logits, args.decode_tokens)
        keys = stream.open.caches[0].get_seq_length()
        result["decode"] = {"tokens": args.decode_tokens, "ms_per_token": 1e3 * c.seconds / args.decode_tokens,
                            "keys_at_end": keys}
        if args.profile:
            holder = {"logits": logits}

            def profile_decode():
                holder["logits"] = decode(stream, holder["logits"], args.decode_tokens)

            profiles["decode"] = profiled(torch, profile_decode, args.profile_rows, "decode")
            logits = holder["logits"]

        # the backbone alone with a KV cache of as many keys: one plain decoding step
        from transformers import DynamicCache

        from framework.models.hf_compat import cache_keyword

        base, cache = model.backbone, DynamicCache()
        kv = {cache_keyword(base): cache, "use_cache": True, "logits_to_keep": 1}
        filler = torch.randint(0, vocab, (1, keys), generator=gen).to(device)
        for start in range(0, keys, 1024):
            out = base(input_ids=filler[:, start:start + 1024], **kv)
        for _ in range(2):
            out = base(input_ids=out.logits[:, -1:].argmax(-1), **kv)
        with clock() as c:
            for _ in range(args.decode_tokens):
                out = base(input_ids=out.logits[:, -1:].argmax(-1), **kv)
        base_ms = 1e3 * c.seconds / args.decode_tokens
        result["decode"]["backbone_kv_cache_ms_per_token"] = base_ms
        result["decode"]["ratio_to_backbone"] = result["decode"]["ms_per_token"] / base_ms
        del cache, out

        # close: fill the open chunk, then time the token that fills it and the one that closes and reopens it
        left = chunk - stream.open.n_text
        if left > 1:
            stream.feed(torch.randint(0, vocab, (1, left - 1), generator=gen).to(device), logits=None)
        with clock() as c:
            logits = decode(stream, logits, 1)  # fills the chunk
        fill_s = c.seconds
        with clock() as c:
            decode(stream, logits, 1)  # closes it, opens the next
        result["close"] = {"close_and_open_s": c.seconds, "last_token_of_chunk_s": fill_s,
                           "amortized_ms_per_token": 1e3 * c.seconds / chunk}

    # training
    if args.train_chunks:
        model = CoMeTForCausalLM.from_base(model.backbone, CoMeTConfig(
            **shape["comet"], neutral_start=not args.reference, gradient_checkpointing=True)).train()
        ids = torch.randint(0, vocab, (1, args.train_chunks * chunk), generator=gen).to(device)
        warm = ids[:, :64]
        model(input_ids=warm, labels=warm, return_logits=False).loss.backward()
        model.zero_grad(set_to_none=False)

        def step():
            model(input_ids=ids, labels=ids, return_logits=False).loss.backward()

        with clock() as c:
            step()
        result["training"] = {"chunks": args.train_chunks, "seconds": c.seconds,
                              "s_per_chunk": c.seconds / args.train_chunks, "gradient_checkpointing": True}
        if args.profile:
            one = ids[:, :chunk]
            profiles["training"] = profiled(
                torch, lambda: model(input_ids=one, labels=one, return_logits=False).loss.backward(),
                args.profile_rows, "training (one chunk)")
    if not args.no_memory:
        memory(args, result)
    if profiles:
        result["profile"] = profiles
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    text = json.dumps(run(args), indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
