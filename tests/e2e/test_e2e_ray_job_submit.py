"""`ray job submit` of the recipe against a local head started with `ray start`, token auth on."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from recipe_runs import ROOT, ensure_ray_token, free_port, head_env, head_ports, ray_pids, recipe_env

pytestmark = [pytest.mark.timeout(900), pytest.mark.own_ray]  # the test's own head, not the shared one


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard = free_port(), free_port()
    env = recipe_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_MODE"] = "token"
    ensure_ray_token(env)
    start = subprocess.run(
        ["ray", "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         *head_ports()],
        env=head_env(env, temp_dir), capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for pid in ray_pids(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)


def test_ray_job_submit_runs_the_tiny_recipe_to_a_registered_model(ray_head):
    address, env = ray_head
    cmd = ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--",
           "python", "recipes/comet_32k.py", "--preset", "tiny", "--num-workers", "2"]
    for _ in range(6):  # a fresh head's job agent can lag `ray start`: Ray answers 500 "try again later"
        out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=800)
        if out.returncode == 0 or "No available agent to submit job" not in out.stdout:
            break
        time.sleep(10)
    assert out.returncode == 0, out.stdout[-6000:]
    assert "succeeded" in out.stdout
    assert "worker group of 2 starting from scratch" in out.stdout
    assert "registered model: models:/comet-32k-tiny@champion" in out.stdout
    # the job attached to the head: it did not start a Ray instance of its own
    assert "Started a local Ray instance" not in out.stdout
