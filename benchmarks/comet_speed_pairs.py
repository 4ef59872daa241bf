"""CoMeT speed, an earlier commit against the working tree, back to back: `comet_speed.py` of each, alternately,
--pairs times. Prints one JSON object.

    python benchmarks/comet_speed_pairs.py --before 30e3b12 --pairs 3 --out benchmarks/results/comet_speed_pairs.json

This machine's speed drifts by up to about 20% from minute to minute, so one run of each is not a comparison: the
runs alternate (before, now, before, now, ...) and the JSON keeps every pair's ratios (before / now: above 1, now
is faster) and their medians. "before" and "now" are the runs of the median prefill ratio's pair, whole.

The earlier commit is checked out in a temporary git worktree (removed afterwards) and runs its own
benchmarks/comet_speed.py with its own defaults (and --before-args); the working tree's runs add --no-memory (the
memory figures are not compared) and any arguments after `--`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = {"prefill_s_per_chunk": ("prefill", "s_per_chunk"), "decode_ms_per_token": ("decode", "ms_per_token"),
           "training_s_per_chunk": ("training", "s_per_chunk")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="30e3b12", help="the earlier commit [30e3b12: the code the speed issue timed]")
    p.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs [3]")
    p.add_argument("--before-args", default="", help="arguments for the earlier commit's comet_speed.py [none]")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("now_args", nargs="*", help="after --: more arguments for the working tree's comet_speed.py")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error(f"--pairs {args.pairs}: need at least 1")
    return args


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise SystemExit(f"git {' '.join(args)} failed: {detail.strip()}. Fix: run from a git checkout of the "
                         "project that has the --before commit (git fetch, or pass another --before)") from None


def run_speed(script: str, extra: list) -> dict:
    out = subprocess.run([sys.executable, script, *extra], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{script} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def figures(result: dict) -> dict:
    return {name: result[phase][key] for name, (phase, key) in FIGURES.items() if phase in result}


def main(argv=None) -> dict:
    args = parse_args(argv)
    before_rev = git("rev-parse", "--short", args.before)
    now_rev = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    pairs = []
    with tempfile.TemporaryDirectory(prefix="comet_speed_before_") as tmp:
        tree = os.path.join(tmp, "tree")
        git("worktree", "add", "--detach", tree, before_rev)
        try:
            for i in range(args.pairs):
                print(f"[comet_speed_pairs] pair {i + 1}/{args.pairs}", file=sys.stderr, flush=True)
                before = run_speed(os.path.join(tree, "benchmarks", "comet_speed.py"), shlex.split(args.before_args))
                now = run_speed(os.path.join(ROOT, "benchmarks", "comet_speed.py"), ["--no-memory", *args.now_args])
                b, n = figures(before), figures(now)
                pairs.append({"before": before, "now": now,
                              "ratios": {k: b[k] / n[k] for k in FIGURES if k in b and k in n}})
        finally:
            git("worktree", "remove", "--force", tree)
    medians = {k: statistics.median(p["ratios"][k] for p in pairs) for k in pairs[0]["ratios"]}
    middle = sorted(pairs, key=lambda p: p["ratios"]["prefill_s_per_chunk"])[(len(pairs) - 1) // 2]
    result = {
        "benchmark": "comet_speed_pairs",
        "before_rev": before_rev, "now_rev": now_rev + ("+changes" if dirty else ""),
        "machine": middle["now"]["machine"],
        "ratios": [p["ratios"] for p in pairs],
        "median_ratio": medians,
        "min_ratio": {k: min(p["ratios"][k] for p in pairs) for k in medians},
        "max_ratio": {k: max(p["ratios"][k] for p in pairs) for k in medians},
        "before": middle["before"], "now": middle["now"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
