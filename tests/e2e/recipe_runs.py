"""Helpers to run recipes as users do: a subprocess in a scratch working directory, real Ray, real MLflow."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "comet_32k.py"
FAST = ["--preset", "tiny", "--data.seq_len", "192", "--launch.checkpoint_every_n_steps", "4"]
# the test-speed flags that the tests add to the comet_32k command that the pages show
SPEED = FAST[2:]
# set while a test runs with the session's shared Ray head (tests/e2e/conftest.py): the address recipes attach to
SHARED_RAY = "LONGCTX_TEST_RAY_ADDRESS"


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
    shared = env.pop(SHARED_RAY, None)
    if shared:  # attach to the shared head (a running `ray start`, token auth on) instead of starting a Ray
        env["RAY_ADDRESS"] = shared
        env["RAY_AUTH_MODE"] = "token"
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




HEAD_MARK = "LONGCTX_TEST_RAY_HEAD"  # in the environment of every process of a test's head: some rename their title


def head_env(env: dict, temp_dir: str) -> dict:
    """`env` for `ray start` of a head in `temp_dir`: its processes (agents included) carry the mark."""
    return {**env, HEAD_MARK: temp_dir}


def head_ports() -> list[str]:
    """Free ports for the per-node agents and the client server, whose defaults (52365, 10001, ...) a head started
    by another run on the machine (or left behind by a killed one) may still hold."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}"]


def ray_pids(temp_dir: str) -> list[int]:
    """Processes of a Ray head, found by its own temp dir (never other Ray clusters on the machine): in the command
    line, or as the mark of `head_env` (the agents and workers rename their titles, e.g. ray::DashboardAgent)."""
    mark = f"{HEAD_MARK}={temp_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if temp_dir in cmdline or mark in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def ensure_ray_token(env: dict) -> None:
    """The README's `ray get-auth-token --generate` (once per machine), when no token is there yet: on a fresh
    machine `ray start` with token auth on refuses to start without one (Ray's AuthenticationError)."""
    if env.get("RAY_AUTH_TOKEN"):
        return
    path = env.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if os.path.exists(path):
        return
    made = subprocess.run(["ray", "get-auth-token", "--generate"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120)  # stdout is the token: never shown
    if made.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"ray get-auth-token --generate did not write {path}: {made.stderr[-2000:]}")


class RayHead:
    """A local Ray head started with `ray start --head`, token auth on (RAY_AUTH_MODE=token), in a short temp dir of
    its own; `stop` kills only its processes. Recipes attach with RAY_ADDRESS=`address`; its processes (the
    controller and worker actors) get `env`: the test-speed settings of `recipe_env`, and RAY_ADDRESS, so that Ray's
    own helpers find this cluster when another runs on the machine."""

    def __init__(self, num_cpus: int | None = None):
        self.num_cpus = num_cpus or max(4, os.cpu_count() or 1)
        self.temp_dir = self.cwd = None
        self.address = self.dashboard = None
        self.env: dict = {}

    def start(self, timeout: float = 300) -> "RayHead":
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.cwd = tempfile.mkdtemp(prefix="ray-head-cwd-")  # the workers' working directory
        port, dashboard = free_port(), free_port()
        self.address, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
        env = recipe_env()
        env.pop("RAY_ADDRESS", None)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env["RAY_AUTH_MODE"] = "token"
        self.env = dict(env)
        ensure_ray_token(env)
        started = subprocess.run(
            ["ray", "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
             "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
             "--disable-usage-stats", *head_ports()],
            cwd=self.cwd, env=head_env({**env, "RAY_ADDRESS": self.address}, self.temp_dir), capture_output=True,
            text=True, timeout=timeout)
        if started.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
        return self

    @property
    def running(self) -> bool:
        return bool(self.temp_dir) and any(ray_pids(self.temp_dir))

    def stop(self) -> None:
        if not self.temp_dir:
            return
        for pid in ray_pids(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while ray_pids(self.temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        for path in (self.cwd, self.temp_dir):
            shutil.rmtree(path, ignore_errors=True)
        self.temp_dir = self.cwd = self.address = None


_SHARED: RayHead | None = None


def shared_ray_head() -> RayHead:
    """The session's shared head, started on first use (and again after `stop_shared_ray_head`)."""
    global _SHARED
    if _SHARED is None or not _SHARED.running:
        if _SHARED is not None:
            _SHARED.stop()
        _SHARED = RayHead().start()
    return _SHARED


def stop_shared_ray_head() -> None:
    """Before a test that starts a Ray of its own, and at the end of the session: one cluster on the machine at a
    time (Ray's own helpers, given no address, refuse to choose between two)."""
    global _SHARED
    if _SHARED is not None:
        _SHARED.stop()
        _SHARED = None
