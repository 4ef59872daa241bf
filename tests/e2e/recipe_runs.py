"""Helpers to run recipes as users do: a subprocess in a scratch working directory, real Ray, real MLflow."""

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "comet_32k.py"
FAST = ["--preset", "tiny", "--data.seq_len", "192", "--launch.checkpoint_every_n_steps", "4"]
# the test-speed flags that the tests add to the comet_32k command that the pages show
SPEED = FAST[2:]


@dataclass
class RecipeRun:
    returncode: int
    stdout: str
    cwd: Path

    @property
    def run_id(self) -> str:
        match = re.search(r"MLflow run ([0-9a-f]{32})", self.stdout)
        assert match, self.stdout[-3000:]
        return match.group(1)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"


def recipe_env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_DEDUP_LOGS"] = "0"
    # test speed only (each a documented Ray Train setting): the controller polls its workers every
    # 0.5 s instead of 2 s, and two helper actors (a process each) are not started on one machine
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    env["RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION"] = "0"
    return env


def run_recipe(cwd: Path, *args, timeout=600, recipe: Path = RECIPE, fast=FAST, command: list[str] | None = None
               ) -> RecipeRun:
    """Run ``recipe`` with ``fast`` and ``args``, or ``command`` (a page command from ``shown``) with ``args``."""
    argv = [*command, *args] if command else [sys.executable, str(recipe), *fast, *args]
    proc = subprocess.run(argv, cwd=cwd, env=recipe_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return RecipeRun(proc.returncode, proc.stdout, cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


