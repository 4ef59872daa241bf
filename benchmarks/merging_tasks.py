"""Merging two task models fine-tuned from one base, on the CPU in well under a minute.

    python benchmarks/merging_tasks.py --out benchmarks/results/merging_tasks.json --plot docs/img/merging_tasks.png
    python benchmarks/merging_tasks.py --plot-only benchmarks/results/merging_tasks.json --plot docs/img/merging_tasks.png

A tiny Llama (hidden 64, 2 layers) over a word-level vocabulary of 512 words ``w0 .. w511``, pretrained
(400 Adam steps, lr 3e-3) on related skills over the whole vocabulary (runs with stride 2 or 3, and 3
words repeated), is the base. Two synthetic tasks, each in its own part of the vocabulary:

- ``count``: runs of consecutive words, ``w{s} w{s+1} ... w{s+15}`` with s in [0, 240); scored on every
  position after the first.
- ``copy``: 4 random words of [256, 512) repeated 4 times; scored on the 12 positions after the first 4.

The score is next-token accuracy (greedy, teacher-forced) on 128 held-out sequences per task. Model A is
fine-tuned on ``count``, model B on ``copy``, the multi-task model on both (as many steps as A and B
together; 250 steps each by default), all from the base with Adam at lr 1e-3. Then every method merges A and B (framework.merging), Hi-Merging
with a calibration set of 16 held-out sequences (8 per task, not the scored ones). The JSON has each
model's score on both tasks, the settings and the wall time. The PNG (``--plot``, default: ``--out`` with
``.png``) shows both tasks' scores for every model, the merges beside the fine-tunes and the multi-task model;
``--plot-only RESULT.json`` redraws it from a recorded result without training anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VOCAB = 512
LENGTH = 16
METHODS = [  # (label, method, density, lambda)
    ("task_arithmetic_l1.0", "task_arithmetic", 1.0, 1.0),
    ("task_arithmetic_l0.5", "task_arithmetic", 1.0, 0.5),
    ("ties_d0.5", "ties", 0.5, 1.0),
    ("dare_d0.5_l0.5", "dare", 0.5, 0.5),
    ("dare_ties_d0.5", "dare_ties", 0.5, 1.0),
    ("nan+task_arithmetic", "nan+task_arithmetic", 1.0, 1.0),
    ("nan+ties_d0.5", "nan+ties", 0.5, 1.0),
    ("nan+dare_d0.5", "nan+dare", 0.5, 1.0),
    ("hi_merging", "hi_merging", 1.0, 1.0),
]


def count_sequence(rng: random.Random) -> list[int]:
    s = rng.randrange(0, 256 - LENGTH)
    return list(range(s, s + LENGTH))


def copy_sequence(rng: random.Random) -> list[int]:
    block = [rng.randrange(256, VOCAB) for _ in range(4)]
    return block * (LENGTH // 4)


TASKS = {"count": (count_sequence, 1), "copy": (copy_sequence, 4)}  # generator, first scored position


def stride_sequence(rng: random.Random) -> list[int]:
    step = rng.choice((2, 3))
    s = rng.randrange(0, VOCAB - step * LENGTH)
    return list(range(s, s + step * LENGTH, step))


def copy3_sequence(rng: random.Random) -> list[int]:
    block = [rng.randrange(0, VOCAB) for _ in range(3)]
    return (block * LENGTH)[:LENGTH]


# the base's pretraining: related but different skills over the whole vocabulary
PRETRAIN = {"stride": (stride_sequence, 1), "copy3": (copy3_sequence, 3)}


def text(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["<unk>"] = VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>")


def train(model, task_names: list[str], steps: int, seed: int, batch: int = 16, lr: float = 1e-3):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        gen = {**TASKS, **PRETRAIN}[task_names[step % len(task_names)]][0]
        ids = torch.tensor([gen(rng) for _ in range(batch)])
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def accuracy(model, sequences: list[list[int]], first: int) -> float:
    ids = torch.tensor(sequences)
    with torch.no_grad():
        pred = model(input_ids=ids).logits.argmax(-1)[:, :-1]
    target = ids[:, 1:]
    return float((pred[:, first - 1:] == target[:, first - 1:]).float().mean())


def make_plot(result: dict, path: str) -> str:
    """Both tasks' accuracy for every model of a result, one pair of bars each: the base, the two fine-tunes and
    the multi-task model first, then every merge of A and B below a rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = result["scores"]
    labels = list(scores)
    references = sum(1 for label in labels if label in ("base", "model_a_count", "model_b_copy", "multi_task"))
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.42 * len(labels)))
    height = 0.38
    for k, task in enumerate(TASKS):
        ys = [i + (k - 0.5) * height for i in range(len(labels))]
        values = [scores[label][task] for label in labels]
        ax.barh(ys, values, height=height, color=f"C{k}", label=task)
        for y, v in zip(ys, values):
            ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=7)
    ax.axhline(references - 0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.2)
    ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("next-token accuracy on held-out sequences")
    ax.set_title("Accuracy on each task: base, fine-tunes and multi-task model\n(above the line), merges of A and B "
                 "(below)", fontsize=9)
    ax.legend(title="task", loc="lower right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250, help="fine-tuning steps per task")
    parser.add_argument("--pretrain-steps", type=int, default=400, help="steps of the base's pretraining")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--plot", default=None,
                        help="write the PNG here (default: --out, or --plot-only's JSON, with .png)")
    parser.add_argument("--plot-only", default=None, metavar="JSON",
                        help="only draw the PNG from this recorded result (no training)")
    args = parser.parse_args(argv)
    if args.plot_only:
        if not os.path.isfile(args.plot_only):
            print(f"merging_tasks.py: error: --plot-only {args.plot_only!r}: no such file. Fix: pass a JSON written "
                  "by --out", file=sys.stderr)
            return 2
        plot = make_plot(json.loads(Path(args.plot_only).read_text()),
                         args.plot or str(Path(args.plot_only).with_suffix(".png")))
        print(f"[merging_tasks] plot: {plot}", file=sys.stderr)
        return 0

    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from framework.merging import MergeSpec, merge_folders

    torch.set_num_threads(1)
    start = time.time()
    rng = random.Random(args.seed + 1000)
    test = {name: [gen(rng) for _ in range(128)] for name, (gen, _) in TASKS.items()}
    calibration = [text(TASKS[name][0](rng)) for name in TASKS for _ in range(8)]
    tok = word_tokenizer()
    cfg = LlamaConfig(vocab_size=VOCAB + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    scores: dict[str, dict[str, float]] = {}

    def score(label: str, model) -> None:
        scores[label] = {name: round(accuracy(model, test[name], TASKS[name][1]), 4) for name in TASKS}
        scores[label]["mean"] = round(sum(scores[label][n] for n in TASKS) / len(TASKS), 4)
        print(f"[merging_tasks] {label}: {scores[label]}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="merging-tasks-") as root:
        torch.manual_seed(args.seed)
        base = train(LlamaForCausalLM(cfg), list(PRETRAIN), args.pretrain_steps, args.seed, lr=3e-3)
        dirs = {"base": os.path.join(root, "base")}
        base.save_pretrained(dirs["base"])
        tok.save_pretrained(dirs["base"])
        score("base", base)
        for label, tasks, steps in (("model_a_count", ["count"], args.steps), ("model_b_copy", ["copy"], args.steps),
                                    ("multi_task", ["count", "copy"], 2 * args.steps)):
            model = train(AutoModelForCausalLM.from_pretrained(dirs["base"]), tasks, steps, args.seed + len(dirs))
            dirs[label] = os.path.join(root, label)
            model.save_pretrained(dirs[label])
            score(label, model)
        calib = os.path.join(root, "calibration.jsonl")
        with open(calib, "w") as fh:
            fh.writelines(json.dumps({"text": t}) + "\n" for t in calibration)
        coefficients = {}
        for label, method, density, lam in METHODS:
            out = os.path.join(root, "merged-" + label)
            report = merge_folders(dirs["base"], [dirs["model_a_count"], dirs["model_b_copy"]], out,
                                   MergeSpec(method=method, density=density, lam=lam, seed=args.seed),
                                   calibration=calib)
            score(label, AutoModelForCausalLM.from_pretrained(out).eval())
            coefficients[label] = {"weights": [round(w, 4) for w in report.weights]}
            if method == "hi_merging":
                c = report.coefficients
                coefficients[label].update({"alpha": [round(a, 4) for a in c["hi_alpha"]],
                                            "beta": {i: {g: round(v, 4) for g, v in b.items()}
                                                     for i, b in c["hi_beta"].items()},
                                            "calibration_loss_start": round(c["hi_calibration_loss_start"], 4),
                                            "calibration_loss": round(c["hi_calibration_loss"], 4)})
    result = {
        "benchmark": "merging_tasks",
        "settings": {"vocab": VOCAB, "length": LENGTH, "hidden": 64, "layers": 2, "pretrain_steps": args.pretrain_steps, "pretrain_lr": 3e-3,
                     "steps_per_task": args.steps,
                     "multi_task_steps": 2 * args.steps, "batch": 16, "lr": 1e-3, "seed": args.seed,
                     "test_sequences_per_task": 128, "calibration_sequences": len(calibration),
                     "methods": [{"label": m[0], "method": m[1], "density": m[2], "lambda": m[3]} for m in METHODS]},
        "scores": scores,
        "coefficients": coefficients,
        "wall_s": round(time.time() - start, 1),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "threads": 1},
    }
    payload = json.dumps(result, indent=2)
    print(payload)
    if args.out:
        Path(args.out).write_text(payload + "\n")
    plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if plot:
        print(f"[merging_tasks] plot: {make_plot(result, plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
