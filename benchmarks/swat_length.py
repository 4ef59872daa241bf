"""SWAT length extrapolation: loss against evaluation length for four tiny models trained from scratch.

    python benchmarks/swat_length.py                 # the default run (about 10 min on a 2-core CPU)
    python benchmarks/swat_length.py --quick         # a few steps of tiny models (seconds; for tests)
    python benchmarks/swat_length.py --steps 400 --batch 8 --out /tmp/s.json --plot /tmp/s.png

Prints one JSON object, writes it to ``--out`` (default ``benchmarks/results/swat_length.json``) and
plots loss against evaluation length to ``--plot`` (default ``docs/img/swat_length.png``).

What it measures (methods.md section 5, paper Tables 2 and 3): four SWAT-architecture models with the
same width, depth, heads, seed (hence the same initial weights), optimizer (AdamW, warmup + cosine),
steps and training tokens, trained in one run on the shipped Austen novels:

- ``swat``: sigmoid attention, balanced slopes, RoPE, window w, trained on sequences of 4w;
- ``vanilla``: softmax, RoPE, no slopes, window >= every sequence it sees (exactly a full-attention
  Transformer with RoPE), trained on sequences of w with a 4x larger batch;
- ``sigmoid_no_bias``: sliding sigmoid attention (window w) with neither slopes nor RoPE, at 4w;
- ``sliding_softmax``: sliding softmax attention (window w) with RoPE and no slopes, at 4w.

Every step draws ``--batch`` training windows of 4w tokens; ``vanilla`` sees each cut into four
windows of w, so all four models see the same tokens in the same order. Each model is then evaluated
(mean next-token cross-entropy, nats) on the validation split (last 5% of the token stream) at
w, 4w, 16w, 64w and 256w: the same leading span of the split is cut into windows of each length, so
every length averages over the same tokens. Each model's own multiples are 1x, 4x, 16x and 64x its
training length (vanilla: w..64w; the others: 4w..256w).

Claims (booleans under "claims", each with the numbers behind it in "<claim>_detail"):
``swat_flat`` (SWAT's loss at 4x/16x/64x within --flat-tol of 1x), ``vanilla_rises`` (vanilla's
loss rises monotonically over 1x..64x and by more than --rise-margin at 64x; the default margin is
the same band), ``swat_beats_sigmoid_no_bias`` and ``swat_beats_sliding_softmax`` (lower loss at
every multiple; the Table 3 ablations), ``swat_beats_vanilla_beyond_vanilla_training_length``
(lower loss at every common length > w; Table 2's comparison).

Defaults: hidden 128, 2 layers, 4 heads (head_dim 32), w = 32, 1600 steps of 2 x 128 tokens (4.1e5
tokens per model, ~0.47 epoch), AdamW lr 3e-3, 5% warmup, cosine to 0.1x. At a fixed token budget
this small batch with more steps trained every model to a lower loss than 400 steps of 8 x 128 did.
One torch thread: on the shared 2-core machine two threads were 3-10x slower per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from framework.metrics.training_curve import summarize_curve as loss_curve  # noqa: E402

MODELS = ("swat", "vanilla", "sigmoid_no_bias", "sliding_softmax")
MULTIPLES = (1, 4, 16, 64)
LENGTH_FACTORS = (1, 4, 16, 64, 256)  # evaluation lengths, in units of the window w
TRAIN_FACTOR = {"swat": 4, "vanilla": 1, "sigmoid_no_bias": 4, "sliding_softmax": 4}  # training length / w
LABELS = {
    "swat": "SWAT (sigmoid, balanced slopes, RoPE; window w, trained at 4w)",
    "vanilla": "vanilla (full softmax attention, RoPE; trained at w)",
    "sigmoid_no_bias": "sliding sigmoid, no slopes, no RoPE (window w, trained at 4w)",
    "sliding_softmax": "sliding softmax, RoPE, no slopes (window w, trained at 4w)",
}
QUICK = dict(steps=4, window=8, hidden=32, layers=1, heads=2, batch=2, eval_tokens=2048, warmup=1)


def model_config(name: str, args):
    """The SWATConfig of one of the four models."""
    from framework.models.swat import SWATConfig

    w = args.window
    common = dict(vocab_size=args.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, use_cache=False, block_size=args.block_size)
    if name == "swat":
        return SWATConfig(**common, window=w, normalization="sigmoid", slopes="balanced", rope=True)
    if name == "vanilla":  # a window as long as the longest sequence it ever sees = full causal attention
        return SWATConfig(**common, window=max(LENGTH_FACTORS) * w, normalization="softmax", slopes="none",
                          rope=True)
    if name == "sigmoid_no_bias":
        return SWATConfig(**common, window=w, normalization="sigmoid", slopes="none", rope=False)
    if name == "sliding_softmax":
        return SWATConfig(**common, window=w, normalization="softmax", slopes="none", rope=True)
    raise ValueError(f"unknown model {name!r}; use one of {MODELS}")


def training_order(num_windows: int, count: int, seed: int):
    """`count` indices into the training windows: shuffled epochs, reshuffled each epoch."""
    import numpy as np

    rng = np.random.default_rng([seed, 0x5A7])
    order = []
    while len(order) < count:
        order.extend(rng.permutation(num_windows).tolist())
    return order[:count]


def make_batch(windows, indices, split: int) -> dict:
    """Stack training windows; `split` > 1 cuts each into that many consecutive shorter windows."""
    import torch

    items = [windows[i] for i in indices]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "labels", "document_ids")}
    if split > 1:
        batch = {k: v.reshape(v.shape[0] * split, v.shape[1] // split) for k, v in batch.items()}
    return batch


def train_model(name: str, args, train_windows, order) -> tuple[object, dict]:
    import torch

    from framework.job import OptimConfig
    from framework.methods.causal_lm import token_loss_sum
    from framework.methods.optim import build_optimizer
    from framework.models.swat import SWATForCausalLM

    cfg = model_config(name, args)
    torch.manual_seed(args.seed)  # same shapes in every model, so the same initial weights
    model = SWATForCausalLM(cfg).train()
    optim = OptimConfig(lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
                        min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip, betas=(0.9, 0.95))
    opt, sched = build_optimizer(model, [], optim, args.steps)
    split = TRAIN_FACTOR["swat"] // TRAIN_FACTOR[name]
    losses, grad_norms, tokens = [], [], 0
    t0 = time.perf_counter()
    for step in range(args.steps):
        batch = make_batch(train_windows, order[step * args.batch:(step + 1) * args.batch], split)
        loss_sum, count = token_loss_sum(model, batch)
        loss = loss_sum / count
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else math.inf)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        grad_norms.append(float(norm))
        tokens += batch["input_ids"].numel()
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"[swat_length] {name} step {step + 1}/{args.steps} loss {losses[-1]:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return model.eval(), {
        "config": {k: getattr(cfg, k) for k in ("window", "normalization", "slopes", "rope", "block_size")},
        "train_length": TRAIN_FACTOR[name] * args.window,
        "sequences_per_step": args.batch * split,
        "parameters": params,
        "train_seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "training": summarize_curve(losses, grad_norms),
    }


def summarize_curve(losses: list[float], grad_norms: list[float], points: int = 20) -> dict:
    """The library's loss-curve summary (framework.metrics.training_curve), plus the gradient norms' extremes."""
    summary = loss_curve(losses, points)
    curve = summary.pop("curve")
    n = len(losses)
    return {**summary, "max_grad_norm": round(max(grad_norms), 3),
            "median_grad_norm": round(sorted(grad_norms)[n // 2], 3), "curve": curve}


def evaluate(model, val_tokens_windows: dict, batch_tokens: int) -> dict:
    """{length: (mean next-token loss, tokens scored)} over the prepared validation windows."""
    import torch

    from framework.methods.causal_lm import token_loss_sum

    out = {}
    with torch.no_grad():
        for length, windows in val_tokens_windows.items():
            per = max(1, batch_tokens // length)
            total, count = 0.0, 0
            for start in range(0, len(windows), per):
                items = windows[start:start + per]
                batch = {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "labels", "document_ids")}
                s, c = token_loss_sum(model, batch)
                total += float(s)
                count += int(c)
            out[length] = (total / count, count)
    return out


def validation_windows(tokenizer, lengths: list[int], cap_tokens: int) -> tuple[dict, int]:
    """Windows of every length cut from the same leading span of the validation split: as many
    windows of the longest length as fit (at most `cap_tokens` tokens, 0 = no cap)."""
    from data_pipelines.text import TextWindows

    longest = max(lengths)
    fit = len(TextWindows(tokenizer, longest, split="validation"))
    n_long = fit if not cap_tokens else max(1, min(fit, cap_tokens // longest))
    span = n_long * longest
    out = {}
    for length in lengths:
        tw = TextWindows(tokenizer, length, split="validation")
        out[length] = [tw[i] for i in range(span // length)]
    return out, span


def make_plot(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result["args"]["window"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for name in result["models"]:
        own = result["loss_by_multiple"][name]
        axes[0].plot(MULTIPLES, [own[str(m)] for m in MULTIPLES], marker="o", label=name)
        common = result["loss_by_length"][name]
        lengths = sorted(int(k) for k in common)
        axes[1].plot(lengths, [common[str(n)] for n in lengths], marker="o", label=name)
        axes[1].axvline(result["per_model"][name]["train_length"], color=axes[1].lines[-1].get_color(),
                        linestyle=":", linewidth=1)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(MULTIPLES, labels=[f"{m}x" for m in MULTIPLES])
    axes[0].set_xlabel("evaluation length / the model's own training length")
    axes[0].set_title("Loss vs evaluation length (own training length = 1x)", fontsize=10)
    axes[1].set_xscale("log", base=2)
    lengths = [f * w for f in LENGTH_FACTORS]
    axes[1].set_xticks(lengths, labels=[str(n) for n in lengths])
    axes[1].set_xlabel(f"evaluation length (tokens; window w = {w}; dotted = training length)")
    axes[1].set_title("Every model at every length", fontsize=10)
    for ax in axes:
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    a = result["args"]
    fig.suptitle(f"SWAT vs vanilla vs ablations: hidden {a['hidden']}, {a['layers']} layers, {a['heads']} heads, "
                 f"{a['steps']} steps x {a['batch'] * 4 * w} tokens (Austen novels)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def claims(loss_mult: dict, loss_len: dict, w: int, flat_tol: float, rise_margin: float) -> dict:
    """The paper's claims as booleans, each with the numbers behind it."""
    swat, van = loss_mult["swat"], loss_mult["vanilla"]
    rel = {f"{m}x": round(swat[m] / swat[1] - 1, 4) for m in MULTIPLES[1:]}
    van_rel = {f"{m}x": round(van[m] / van[1] - 1, 4) for m in MULTIPLES[1:]}
    monotone = all(van[a] < van[b] for a, b in zip(MULTIPLES, MULTIPLES[1:]))
    longest = max(LENGTH_FACTORS) * w  # 256x vanilla's training length, from the common table
    out = {
        "swat_flat": all(abs(v) <= flat_tol for v in rel.values()),
        "swat_flat_detail": {"tolerance": flat_tol, "relative_change_vs_1x": rel},
        "vanilla_rises": monotone and van_rel["64x"] > rise_margin,
        "vanilla_rises_detail": {
            "margin": rise_margin, "relative_change_vs_1x": van_rel, "monotone": monotone,
            "loss_increase_64x_nats": round(van[64] - van[1], 4),
            f"relative_change_at_{longest // w}x": round(loss_len["vanilla"][longest] / van[1] - 1, 4)},
    }
    for other in ("sigmoid_no_bias", "sliding_softmax"):
        if other in loss_mult:
            diff = {f"{m}x": round(loss_mult[other][m] - swat[m], 4) for m in MULTIPLES}
            out[f"swat_beats_{other}"] = all(d > 0 for d in diff.values())
            out[f"swat_beats_{other}_detail"] = {"loss_minus_swat_loss": diff}
    beyond = [f * w for f in LENGTH_FACTORS if f * w > w]  # lengths past vanilla's training length
    diff = {str(n): round(loss_len["vanilla"][n] - loss_len["swat"][n], 4) for n in beyond}
    out["swat_beats_vanilla_beyond_vanilla_training_length"] = all(d > 0 for d in diff.values())
    out["swat_beats_vanilla_beyond_vanilla_training_length_detail"] = {"vanilla_minus_swat_loss_at_length": diff}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=int, default=32, help="attention window w of the sliding models")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch", type=int, default=2,
                   help="training windows of 4w tokens per step (vanilla: 4x as many of w)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps)")
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=0,
                   help="cap on the validation tokens scored per length (0: as many 256w windows as fit)")
    p.add_argument("--eval-batch-tokens", type=int, default=8192, help="tokens per evaluation forward pass")
    p.add_argument("--block-size", type=int, default=128,
                   help="query block of the banded attention (speed only; results do not depend on it)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                   help="models to train (swat and vanilla are needed for the claims)")
    p.add_argument("--flat-tol", type=float, default=0.05, help="swat_flat: max relative change vs 1x")
    p.add_argument("--rise-margin", type=float, default=None,
                   help="vanilla_rises: the loss must rise monotonically and by more than this fraction at 64x vs 1x "
                        "(default: --flat-tol, i.e. vanilla leaves the band SWAT must stay within)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine a second thread was 3-10x slower per step)")
    p.add_argument("--log-every", type=int, default=400, help="progress line on stderr every N steps (0: never)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "swat_length.json"))
    p.add_argument("--plot", default=str(REPO / "docs" / "img" / "swat_length.png"))
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.log_every = 0
    if args.rise_margin is None:
        args.rise_margin = args.flat_tol
    if args.warmup is None:
        args.warmup = max(1, args.steps // 20)
    if args.heads % 2 or args.hidden % args.heads or (args.hidden // args.heads) % 2:
        p.error("--heads must be even and divide --hidden into an even head size (balanced slopes, RoPE)")
    if not {"swat", "vanilla"} <= set(args.models):
        p.error("--models must include swat and vanilla")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from data_pipelines.text import TextWindows
    from data_pipelines.tokenizer import load_project_tokenizer

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer = load_project_tokenizer()
    args.vocab_size = len(tokenizer)
    w = args.window
    train_windows = TextWindows(tokenizer, 4 * w, split="train")
    order = training_order(len(train_windows), args.steps * args.batch, args.seed)
    lengths = [f * w for f in LENGTH_FACTORS]
    val, span = validation_windows(tokenizer, lengths, args.eval_tokens)

    per_model, loss_len, tokens_len = {}, {}, {}
    for name in args.models:
        model, info = train_model(name, args, train_windows, order)
        t0 = time.perf_counter()
        scores = evaluate(model, val, args.eval_batch_tokens)
        info["eval_seconds"] = round(time.perf_counter() - t0, 1)
        per_model[name] = info
        loss_len[name] = {n: s[0] for n, s in scores.items()}
        tokens_len[name] = {n: s[1] for n, s in scores.items()}
        print(f"[swat_length] {name}: " + " ".join(f"{n}:{v:.4f}" for n, v in loss_len[name].items()),
              file=sys.stderr, flush=True)
        del model
    loss_mult = {name: {m: loss_len[name][m * per_model[name]["train_length"]] for m in MULTIPLES}
                 for name in args.models}

    rnd = lambda d: {str(k): round(v, 4) for k, v in d.items()}  # noqa: E731
    result = {
        "benchmark": "swat_length",
        "description": "tiny models trained from scratch on the Austen novels; mean next-token validation loss "
                       "(nats) vs evaluation length; multiples are of each model's own training length",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version(), "device": "cpu",
                    "load_avg_1m_at_end": None},
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "plot")},
        "models": {name: LABELS[name] for name in args.models},
        "data": {"train_windows": len(train_windows), "train_window_length": 4 * w,
                 "train_tokens_per_step": args.batch * 4 * w,
                 "train_tokens_seen": args.steps * args.batch * 4 * w,
                 "train_epochs": round(args.steps * args.batch / len(train_windows), 3),
                 "validation_span_tokens": span, "eval_lengths": lengths,
                 "eval_windows_per_length": {str(n): len(v) for n, v in val.items()},
                 "scored_tokens": {name: {str(n): c for n, c in d.items()} for name, d in tokens_len.items()}},
        "loss_by_multiple": {name: {str(m): round(v, 4) for m, v in d.items()} for name, d in loss_mult.items()},
        "loss_by_length": {name: rnd(d) for name, d in loss_len.items()},
        "claims": claims(loss_mult, loss_len, w, args.flat_tol, args.rise_margin),
        "per_model": per_model,
    }
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    plot = Path(make_plot(result, args.plot)).resolve()
    result["plot"] = str(plot.relative_to(REPO)) if plot.is_relative_to(REPO) else str(plot)
    text = json.dumps(result, indent=2)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
