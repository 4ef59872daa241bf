"""CoMeT streaming inference vs full attention with a KV cache: peak memory and time per token.

Every measurement runs in a fresh subprocess, so each peak RSS is that run's own. Prints one JSON
object. Example:

    python benchmarks/comet_memory.py                       # 4k .. 1M tokens, paper-shaped CoMeT
    python benchmarks/comet_memory.py --lengths 4096 32768 --baseline-timeout 60

The backbone is a random Qwen3 (hidden 256, 4 layers, 4 heads, 2 KV heads, head_dim 64), the
shape used to measure the official code on CPU; CoMeT uses the paper's configuration (chunk 2048,
global memory 512, stride 8, temporary budget 2048).
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

LENGTHS = [4096, 32768, 131072, 262144, 1048576]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_backbone(vocab: int):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1 << 21)
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg).eval()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def token_pieces(length: int, piece: int, vocab: int, seed: int = 0):
    """The prompt, made piece by piece so the benchmark itself holds no million-token tensor."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for start in range(0, length, piece):
        yield torch.randint(0, vocab, (1, min(piece, length - start)), generator=gen)


def run_comet(length: int, decode: int, vocab: int) -> dict:
    import torch

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    model = CoMeTForCausalLM.from_base(build_backbone(vocab), CoMeTConfig()).eval()
    after_load = rss_mb()
    stream = model.stream()
    t0 = time.perf_counter()
    with torch.no_grad():
        for ids in token_pieces(length, 8 * model.config.chunk_size, vocab):
            logits = stream.feed(ids, logits="last")
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(decode):
            logits = stream.feed(logits[:, -1].argmax(-1, keepdim=True), logits="last")
    decode_s = time.perf_counter() - t0
    chunks = length / model.config.chunk_size
    return {"prefill_s": prefill, "prefill_ms_per_token": 1e3 * prefill / length,
            "prefill_s_per_chunk": prefill / chunks, "decode_ms_per_token": 1e3 * decode_s / decode,
            "peak_rss_mb": rss_mb(), "rss_after_model_load_mb": after_load}


def run_full_attention(length: int, decode: int, vocab: int) -> dict:
    import torch
    from transformers import DynamicCache

    model = build_backbone(vocab)
    after_load = rss_mb()
    cache = DynamicCache()
    t0 = time.perf_counter()
    with torch.no_grad():
        for ids in token_pieces(length, 2048, vocab):  # prefill in 2048-token pieces: no n^2 mask
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(decode):
            out = model(input_ids=out.logits[:, -1].argmax(-1, keepdim=True), past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
    decode_s = time.perf_counter() - t0
    return {"prefill_s": prefill, "prefill_ms_per_token": 1e3 * prefill / length,
            "decode_ms_per_token": 1e3 * decode_s / decode, "peak_rss_mb": rss_mb(),
            "rss_after_model_load_mb": after_load}


def run_training(chunks: int, vocab: int) -> dict:
    """Forward + backward over `chunks` paper-shaped chunks with activation checkpointing."""
    import torch

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    model = CoMeTForCausalLM.from_base(build_backbone(vocab), CoMeTConfig(gradient_checkpointing=True)).train()
    ids = torch.randint(0, vocab, (1, chunks * model.config.chunk_size), generator=torch.Generator().manual_seed(0))
    warm = torch.randint(0, vocab, (1, 64))
    model(input_ids=warm, labels=warm, return_logits=False).loss.backward()
    model.zero_grad(set_to_none=False)  # gradients allocated: the model's own training memory
    after_load = rss_mb()
    t0 = time.perf_counter()
    model(input_ids=ids, labels=ids, return_logits=False).loss.backward()
    elapsed = time.perf_counter() - t0
    peak = rss_mb()
    return {"chunks": chunks, "s_per_chunk": elapsed / chunks, "peak_rss_mb": peak,
            "rss_before_step_mb": after_load, "step_rss_above_model_mb": peak - after_load}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    fn = {"comet": run_comet, "full": run_full_attention}
    if args.child == "train":
        result = run_training(args.train_chunks, args.vocab)
    else:
        result = fn[args.child](args.length, args.decode, args.vocab)
    print(json.dumps(result))


def spawn(args, kind: str, length: int = 0, timeout: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--length", str(length), "--decode", str(args.decode),
           "--vocab", str(args.vocab), "--threads", str(args.threads), "--train-chunks", str(args.train_chunks)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"failed": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        reason = "killed (out of memory?)" if proc.returncode < 0 else proc.stderr.strip().splitlines()[-1:]
        return {"failed": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    p.add_argument("--decode", type=int, default=64, help="tokens decoded after the prefix")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--baseline-timeout", type=float, default=300.0, help="seconds before full attention counts as failed")
    p.add_argument("--train-chunks", type=int, default=4, help="chunks in the training measurement (0 skips it)")
    p.add_argument("--child", choices=["comet", "full", "train"], help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    import torch

    rows, baseline_failed = [], False
    for length in args.lengths:
        row = {"prefix_tokens": length, "comet": spawn(args, "comet", length)}
        row["full_attention"] = {"skipped": "failed at a shorter length"} if baseline_failed else \
            spawn(args, "full", length, args.baseline_timeout)
        baseline_failed = baseline_failed or "failed" in row["full_attention"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    by_len = {r["prefix_tokens"]: r["comet"] for r in rows if "failed" not in r["comet"]}
    checks = {}
    lo, hi = min(by_len, default=None), max(by_len, default=None)
    if lo is not None and hi != lo:
        checks["peak_rss_ratio_longest_vs_shortest"] = by_len[hi]["peak_rss_mb"] / by_len[lo]["peak_rss_mb"]
    if 32768 in by_len and hi and hi > 32768:
        checks["prefill_time_per_token_ratio_longest_vs_32k"] = \
            by_len[hi]["prefill_ms_per_token"] / by_len[32768]["prefill_ms_per_token"]
        checks["decode_time_per_token_ratio_longest_vs_32k"] = \
            by_len[hi]["decode_ms_per_token"] / by_len[32768]["decode_ms_per_token"]
    result = {
        "benchmark": "comet_memory",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "device": "cpu"},
        "backbone": "random Qwen3: hidden 256, 4 layers, 4 heads, 2 KV heads, head_dim 64, "
                    f"vocab {args.vocab}, fp32, sdpa",
        "comet": {"chunk_size": 2048, "global_mem_size": 512, "temp_stride": 8, "temp_budget": 2048},
        "decode_tokens": args.decode,
        "rows": rows,
        "training": spawn(args, "train") if args.train_chunks else None,
        "checks": checks,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
