"""The PoC recipe's tiny preset, end to end, as the numbers docs/compression.md cites.

    python benchmarks/poc_tiny.py                      # runs the recipe in a scratch folder (~4 min)
    python benchmarks/poc_tiny.py --collect DIR --wall-s 230   # collect a run already made in DIR
    python benchmarks/poc_tiny.py --out benchmarks/results/poc_x.json -- --labels.compressor outputs/cq/comi
                                                       # recipe flags after --, results to --out

Writes benchmarks/results/poc_tiny.json: the command, the machine, the wall time, the recipe's
comparison (PPE and P@R of the context-aware predictor and the mean retention curve on held-out
contexts) and statistics of the measured labels (how much they vary, which decides whether a
context-aware predictor has anything to learn).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python recipes/poc_predictor.py --preset tiny"
OUT = REPO / "benchmarks" / "results" / "poc_tiny.json"


def label_stats(cache) -> dict:
    import numpy as np

    ret, scores = cache.retention, cache.scores
    factors = cache.info["factors"]
    return {
        "mean_score_uncompressed": float(scores[:, 0].mean()),
        "mean_score_by_factor": {str(f): float(scores[:, 1 + j].mean()) for j, f in enumerate(factors)},
        "share_retention_one": float((ret >= 1.0).mean()),
        "retention_std_by_ratio": {f"{r:g}": float(ret[:, j].std()) for j, r in enumerate(cache.ratios)},
        "min_retention": float(ret.min()),
        "context_tokens": {"min": int(cache.store.index[:, 1].min()), "max": int(cache.store.index[:, 1].max())},
        "corr_length_vs_mean_retention": float(np.corrcoef(cache.store.index[:, 1], ret[:, :-1].mean(1))[0, 1])
        if ret[:, :-1].std() > 0 else None,
    }


def collect(directory: Path, wall_s: float, returncode: int, command: str = COMMAND) -> dict:
    sys.path.insert(0, str(REPO))
    from data_pipelines.poc_label_cache import LabelCache
    from framework.eval.reporting import machine_info

    summary = json.loads((directory / "outputs" / "poc" / "comparison.json").read_text())
    cache = LabelCache(summary["labels"]["path"])
    summary.pop("sweep", None)
    return {"command": command, "returncode": returncode, "wall_s": round(wall_s, 1), "machine": machine_info(),
            "summary": summary, "labels_stats": label_stats(cache)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", type=Path, help="a folder where the command already ran")
    parser.add_argument("--wall-s", type=float, help="its wall time, with --collect")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the result file (default {OUT.relative_to(REPO)})")
    parser.add_argument("recipe_args", nargs="*", help="flags for the recipe, after --")
    args = parser.parse_args()
    command = " ".join([COMMAND, *(shlex.quote(a) for a in args.recipe_args)])
    if args.collect:
        result = collect(args.collect, args.wall_s or float("nan"), 0, command)
    else:
        cwd = Path(tempfile.mkdtemp(prefix="poc-tiny-"))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        start = time.perf_counter()
        recipe_args = [os.path.abspath(a) if os.path.isdir(a) else a for a in args.recipe_args]  # run in cwd
        proc = subprocess.run([sys.executable, str(REPO / "recipes" / "poc_predictor.py"), "--preset", "tiny",
                               *recipe_args], cwd=cwd, env=env)
        result = collect(cwd, time.perf_counter() - start, proc.returncode, command)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"]["ppe"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
