"""Wall clock of each recipe's tiny preset, end to end, as a user runs it (the recipe pages' "How long it takes").

    python benchmarks/recipe_times.py > benchmarks/results/recipe_times.json      # every command (long)
    python benchmarks/recipe_times.py --only ram_qa --only comi_qa                # some of them
    python benchmarks/recipe_times.py --only swat_pretrain --max-steps 2          # a smoke check of this script

Prints one JSON object to stdout (progress goes to stderr). Each command of ``COMMANDS`` runs as a
subprocess in a fresh temporary working directory (so ``./mlflow.db`` and ``outputs/`` start empty),
with the repository on ``PYTHONPATH`` and ``RAY_ADDRESS`` / ``MLFLOW_TRACKING_URI`` removed (an
embedded local Ray cluster and a fresh MLflow database, as on a laptop). One row per command: the
wall seconds from start to exit (Ray and MLflow start-up, training, registration and, for the
recipes that have one, the evaluation after it), the exit status, the steps trained (the recipe's
``[longctx] finished N steps`` line) next to the steps the config asks for (``launch.max_steps``
from ``--help-config``, run before and not timed), the registered model line, and the 1-minute
load average at the start and end of the run. ``--max-steps N`` appends ``--max-steps N`` to every
command, and the row's ``command`` says so: the recipe pages cite only rows of the commands as listed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> the command as the recipe pages show it (docs/recipes/<name>.md cites these strings)
COMMANDS = {
    "comet_32k": "python recipes/comet_32k.py --preset tiny",
    "comet_128k_pipeline": "python recipes/comet_128k_pipeline.py --preset tiny",
    "swat_pretrain": "python recipes/swat_pretrain.py --preset tiny",
    "baseline_finetune": "python recipes/baseline_finetune.py --preset tiny --attention full",
    "ram_qa": "python recipes/ram_qa.py --preset tiny",
    "comi_qa": "python recipes/comi_qa.py --preset tiny",
}
FINISHED = re.compile(r"^\[longctx\] finished (\d+) steps", re.M)
REGISTERED = re.compile(r"^\[longctx\] registered model: (.+)$", re.M)
MAX_STEPS = re.compile(r"^--launch\.max_steps (\S+)\s", re.M)
TAIL = 4000  # characters of stdout / stderr kept for a failed run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=list(COMMANDS), metavar="NAME",
                   help=f"time only this command (repeatable): {', '.join(COMMANDS)}")
    p.add_argument("--max-steps", type=int, help="append --max-steps N to every command (not the presets' times)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one command may run [3600]")
    args = p.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps {args.max_steps}: need at least 1 step")
    return args


def recipe_env() -> dict:
    """os.environ with the repository on PYTHONPATH and no RAY_ADDRESS / MLFLOW_TRACKING_URI."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def argv_of(command: str) -> list[str]:
    """The command as an argv: ``python`` is this interpreter, a ``recipes/...py`` path is made absolute
    (the command runs in a temporary directory)."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return [str(REPO / a) if a.endswith(".py") and (REPO / a).is_file() else a for a in argv]


def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def planned_steps(command: str, timeout: float = 300.0) -> int | None:
    """``launch.max_steps`` of the command's config (its ``--help-config``); None when unset or unreadable."""
    with tempfile.TemporaryDirectory(prefix="recipe_times_") as cwd:
        proc = subprocess.run(argv_of(command) + ["--help-config"], cwd=cwd, env=recipe_env(), capture_output=True,
                              text=True, timeout=timeout)
    m = MAX_STEPS.search(proc.stdout) if proc.returncode == 0 else None
    return int(m.group(1)) if m and m.group(1).isdigit() else None


def time_command(command: str, timeout: float = 3600.0) -> dict:
    """Run ``command`` once in a fresh temporary working directory and describe the run."""
    row = {"command": command, "load_avg_1m_at_start": load_avg()}
    with tempfile.TemporaryDirectory(prefix="recipe_times_") as cwd:
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv_of(command), cwd=cwd, env=recipe_env(), capture_output=True, text=True,
                                  timeout=timeout)
            returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as err:
            returncode = None
            stdout = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
            row["timed_out_after_s"] = timeout
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
    row["load_avg_1m_at_end"] = load_avg()
    row["returncode"] = returncode
    finished, registered = FINISHED.search(stdout), REGISTERED.search(stdout)
    row["steps"] = int(finished.group(1)) if finished else None
    row["registered_model"] = registered.group(1).strip() if registered else None
    if returncode != 0:
        row["stdout_tail"], row["stderr_tail"] = stdout[-TAIL:], stderr[-TAIL:]
    return row


def machine(load_at_start: float | None) -> dict:
    """The shared machine block (``framework.eval.reporting.machine_info``) with the load at the start."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from framework.eval.reporting import machine_info

    return {**machine_info(), "load_avg_1m_at_start": load_at_start}


def assemble(rows: list[dict], args: argparse.Namespace, info: dict, started: datetime.datetime,
             wall_seconds: float) -> dict:
    """The JSON object the script prints."""
    return {
        "benchmark": "recipe_times",
        "description": "wall clock of each recipe command, run as a subprocess in a fresh working directory "
                       "(local Ray, a fresh ./mlflow.db): start-up, training, registration and any evaluation",
        "date": started.date().isoformat(),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": info,
        "args": {"only": args.only, "max_steps": args.max_steps, "timeout": args.timeout},
        "runs": rows,
        "wall_seconds": round(wall_seconds, 1),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = args.only or list(COMMANDS)
    started, t0 = datetime.datetime.now().astimezone(), time.perf_counter()
    info = machine(load_avg())
    rows = []
    for name in dict.fromkeys(names):
        command = COMMANDS[name] + (f" --max-steps {args.max_steps}" if args.max_steps is not None else "")
        print(f"[recipe_times] {name}: {command}", file=sys.stderr, flush=True)
        planned = planned_steps(command)
        row = {"name": name, **time_command(command, args.timeout), "planned_steps": planned}
        print(f"[recipe_times] {name}: exit {row['returncode']} after {row['wall_seconds']} s, "
              f"{row['steps']} steps", file=sys.stderr, flush=True)
        rows.append(row)
    info["load_avg_1m_at_end"] = load_avg()
    result = assemble(rows, args, info, started, time.perf_counter() - t0)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if all(r["returncode"] == 0 for r in main()["runs"]) else 1)
