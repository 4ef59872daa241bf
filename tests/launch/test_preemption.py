"""SIGTERM on the driver (a spot reclaim, `ray job stop`): the workers checkpoint the step they reached, the
driver exits within 60 s, and --resume runs:/<id> repeats at most one step. Real local Ray, real MLflow."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from recipe_runs import RECIPE, recipe_env, run_recipe  # noqa: E402

pytestmark = pytest.mark.timeout(900)
WORKERS = "1"
# checkpoints every 1000 steps: only the SIGTERM checkpoint can be reached
ARGS = ["--preset", "tiny", "--data.seq_len", "192", "--launch.checkpoint_every_n_steps", "1000",
        "--tracking.register", "false", "--num-workers", WORKERS]


def _max_step(client, run_id):
    return max((m.step for m in client.get_metric_history(run_id, "train/loss")), default=-1)


def test_sigterm_checkpoints_the_step_reached_and_resume_repeats_at_most_one_step(tmp_path):
    proc = subprocess.Popen([sys.executable, str(RECIPE), *ARGS, "--max-steps", "400"], cwd=tmp_path,
                            env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        run_id, deadline = None, time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            found = re.search(r"MLflow run ([0-9a-f]{32})", "".join(lines))
            if found and _max_step(client, found.group(1)) >= 8:  # metric step 8: 9 optimizer steps done
                run_id = found.group(1)
                break
            time.sleep(0.5)
        assert run_id, "".join(lines)[-5000:]
        proc.send_signal(signal.SIGTERM)
        sent = time.time()
        rc = proc.wait(timeout=90)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    out = "".join(lines)
    assert took < 60, f"exited {took:.0f} s after SIGTERM\n{out[-5000:]}"
    assert rc == 1 and "stopped by SIGTERM: the checkpoint of step" in out, out[-5000:]
    last_logged = _max_step(client, run_id)  # metric step s is optimizer step s + 1
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    ckpts = sorted(a.path for a in client.list_artifacts(run_id, "checkpoints"))
    assert len(ckpts) == 1, ckpts
    local = client.download_artifacts(run_id, ckpts[0], str(tmp_path / "dl"))
    step = json.loads(Path(local, "manifest.json").read_text())["step"]
    assert step >= 9 and f"checkpoint of step {step} is in MLflow run {run_id}" in out
    assert last_logged + 1 - step <= 1, (last_logged, step)  # at most one step is done again

    resumed = run_recipe(tmp_path, *ARGS, "--max-steps", str(step + 2), "--resume", f"runs:/{run_id}",
                         fast=[])
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert "worker group of " + WORKERS + " starting from step " + str(step) in resumed.stdout
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == list(range(step + 2)) and client.get_run(run_id).info.status == "FINISHED"
