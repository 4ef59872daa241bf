"""Does an untrained CoMeT wrapper read text as well as the model it wraps? Prints JSON.

    bash cluster/setup_smollm2.sh                      # once
    python benchmarks/comet_neutral_start.py --out benchmarks/results/comet_neutral_start.json

On the same tokens (by default the first --seq-len tokens of the shipped novels, and the first window of their
held-out end), an untrained CoMeT wrapper around SmolLM2-135M (chunks of 512, 64 global slots, stride 8, budget
128, fp32) is scored with ``framework.eval.perplexity.compare_with_base`` against the base model reading each
512-token window alone and at full context, once with ``neutral_start=True`` (the default) and once with the
reference formulation (``neutral_start=False``). The targets: chunk 0 within 5% of the base model on the same
tokens; chunks >= 1 within 10% of the base model's windows, and no chunk above 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

TARGETS = {"chunk_0": 1.05, "chunks_1_plus": 1.10, "max_chunk": 1.20}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="a Hugging Face folder [the SmolLM2 folder of setup_smollm2.sh]")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--global-mem", type=int, default=64)
    parser.add_argument("--modes", default="neutral,reference", help="neutral, reference or both")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def machine(torch) -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": "cpu", "date": time.strftime("%Y-%m-%d")}


def documents(tokenizer, seq_len: int) -> list:
    from framework.eval.perplexity import data_documents

    first = data_documents({"kind": "text", "seq_len": seq_len, "split": "train"}, tokenizer, 1)
    held_out = data_documents({"kind": "text", "seq_len": seq_len, "split": "validation",
                               "validation_fraction": 0.2}, tokenizer, 1)
    return first + held_out


def main(argv=None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.eval.perplexity import compare_with_base
    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
    from framework.models.smollm2 import default_dir

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_dir = args.base or default_dir()
    if not os.path.isfile(os.path.join(base_dir, "config.json")):
        print(f"error: no Hugging Face model in {base_dir}. Fix: bash cluster/setup_smollm2.sh, or --base DIR",
              file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    docs = documents(tokenizer, args.seq_len)
    result = {"base": base_dir, "seq_len": args.seq_len, "docs": len(docs), "targets": TARGETS,
              "machine": machine(torch), "modes": {}}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        config = CoMeTConfig(chunk_size=args.chunk_size, global_mem_size=args.global_mem, temp_stride=8,
                             temp_budget=128, neutral_start=mode == "neutral")
        model = CoMeTForCausalLM.from_base(base, config).eval()
        start = time.time()
        report = compare_with_base(model, docs, base_full_max_len=None if mode == "neutral" else 0)
        ratios = report["ratios"]["comet_over_base_window"]
        result["modes"][mode] = {
            "seconds": round(time.time() - start, 1),
            "comet_ppl": report["comet"]["overall_ppl"], "base_window_ppl": report["base_window"]["overall_ppl"],
            "base_full_ppl": report["base_full"].get("overall_ppl"),
            "comet_chunk_0_ppl": report["comet"]["chunks"][0]["ppl"],
            "base_chunk_0_ppl": report["base_window"]["chunks"][0]["ppl"],
            "ratios": ratios,
            "targets_met": {k: ratios[k] is not None and ratios[k] <= limit for k, limit in TARGETS.items()},
        }
        print(f"[neutral_start] {mode}: CoMeT {result['modes'][mode]['comet_ppl']:.2f} vs base windows "
              f"{result['modes'][mode]['base_window_ppl']:.2f}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
