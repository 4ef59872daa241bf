"""End to end: the comet_32k recipe on a real local Ray (2 workers) with a real MLflow store."""

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from page_commands import shown
from recipe_runs import FAST, RECIPE, free_port, recipe_env, run_recipe
from mlflow import MlflowClient

pytestmark = pytest.mark.timeout(900)


def _steps(client, run_id, key="train/loss"):
    return [m.step for m in client.get_metric_history(run_id, key)]


def _manifests(root: Path):
    return sorted(json.loads(p.read_text())["step"] for p in root.rglob("manifest.json"))


def test_recipe_trains_logs_checkpoints_and_registers_a_loadable_model(trained_run):
    client = MlflowClient(trained_run.tracking_uri)
    run = client.get_run(trained_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["comet.chunk_size"] == "64" and run.data.params["launch.num_workers"] == "2"
    assert _steps(client, run.info.run_id) == list(range(8))
    for key in ("train/ppl", "train/tokens_per_s", "train/peak_mem_mb", "lr/base", "lr/memory"):
        assert key in run.data.metrics, key
    base_lr = client.get_metric_history(run.info.run_id, "lr/base")
    mem_lr = client.get_metric_history(run.info.run_id, "lr/memory")
    assert mem_lr[-1].value == pytest.approx(5 * base_lr[-1].value)
    # every checkpoint is in the run, with the training state and a manifest
    ckpts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoints"))
    assert ckpts == ["checkpoints/step_000000004", "checkpoints/step_000000008"]
    files = {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, ckpts[-1])}
    assert files == {"checkpoint.ckpt", "manifest.json"}
    local = client.download_artifacts(run.info.run_id, ckpts[-1], str(trained_run.cwd / "dl"))
    manifest = json.loads(Path(local, "manifest.json").read_text())
    assert manifest["step"] == 8 and manifest["data"]["samples_consumed"] == 8 * 2 * 2
    import torch

    state = torch.load(Path(local, "checkpoint.ckpt"), weights_only=True)
    assert state["global_step"] == 8 and state["optimizer_states"] and state["lr_schedulers"] and "rng" in state
    # the registered model: the alias points at the newest version and the pyfunc generates text
    assert "registered model: models:/comet-32k-tiny@champion (version 1)" in trained_run.stdout
    version = client.get_model_version_by_alias("comet-32k-tiny", "champion")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    code = ("import mlflow, json; m = mlflow.pyfunc.load_model('models:/comet-32k-tiny@champion'); "
            "print(json.dumps(m.predict(['The passkey is 1', 'Hello'], params={'max_new_tokens': 4})))")
    env = {**recipe_env(), "MLFLOW_TRACKING_URI": trained_run.tracking_uri}
    out = subprocess.run([sys.executable, "-c", code], cwd=trained_run.cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    predictions = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)


def test_resume_from_run_uri_continues_the_same_run_and_step_count(trained_run, tmp_path):
    first = trained_run
    run = run_recipe(first.cwd, "--num-workers", "2", "--max-steps", "12", "--resume", f"runs:/{first.run_id}")
    assert run.returncode == 0, run.stdout[-5000:]
    assert run.run_id == first.run_id
    assert f"resuming MLflow run {first.run_id} from checkpoints/step_000000008" in run.stdout
    client = MlflowClient(first.tracking_uri)
    assert _steps(client, first.run_id) == list(range(12))
    ckpts = sorted(a.path for a in client.list_artifacts(first.run_id, "checkpoints"))
    assert ckpts[-1] == "checkpoints/step_000000012"
    local = client.download_artifacts(first.run_id, ckpts[-1], str(tmp_path))
    assert json.loads(Path(local, "manifest.json").read_text())["data"]["samples_consumed"] == 12 * 2 * 2
    assert str(client.get_model_version_by_alias("comet-32k-tiny", "champion").version) == "2"


@pytest.mark.own_ray  # it kills a worker process of its run: that run has its own Ray
def test_a_killed_worker_is_restarted_and_training_resumes_from_the_last_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, str(RECIPE), *FAST, "--num-workers", "2", "--max-steps", "14",
                             "--tracking.register", "false"],
                            cwd=tmp_path, env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, killed = [], {}

    def reader():
        for line in proc.stdout:
            lines.append(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not killed:
        # the controller writes this snapshot once it has registered the step-4 checkpoint; a restart resumes from it
        snapshots = list((tmp_path / "outputs" / "ray").glob("*/checkpoint_manager_snapshot.json"))
        if snapshots and "step_000000004" in snapshots[0].read_text():
            pids = [int(p) for p in re.findall(r"RayTrainWorker pid=(\d+)", "".join(lines))]
            if pids:
                victim = pids[-1]
                os.kill(victim, signal.SIGKILL)
                killed["pid"] = victim
        time.sleep(0.2)
    proc.wait(timeout=600)
    thread.join(timeout=10)
    out = "".join(lines)
    assert killed, out[-5000:]
    assert proc.returncode == 0, out[-5000:]
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = _steps(client, run_id)
    assert steps[-1] == 13 and set(range(14)) <= set(steps)
    # the restarted group resumed from a checkpoint taken before the kill, it did not start over (steps
    # logged between that checkpoint and the kill, if any, run twice; a kill right at it repeats none)
    resumed = [int(n) for n in re.findall(r"worker group of 2 starting from step (\d+)", out)]
    assert resumed and resumed[0] >= 4, out[-5000:]
    assert steps.count(0) == 1
    ray_ckpts = _manifests(tmp_path / "outputs" / "ray")
    assert ray_ckpts[-1] == 14


def test_unreachable_tracking_server_fails_fast_with_a_fix(tmp_path):
    port = free_port()
    start = time.time()
    run = run_recipe(tmp_path, "--tracking-uri", f"http://127.0.0.1:{port}", "--tracking.connect_timeout_s", "3")
    assert run.returncode == 2
    assert f"the MLflow tracking server http://127.0.0.1:{port} is unreachable" in run.stdout
    assert "Fix:" in run.stdout and "Traceback" not in run.stdout
    assert time.time() - start < 60
    assert not (tmp_path / "outputs").exists()


def test_resume_from_a_missing_run_is_a_clear_error(tmp_path):
    run = run_recipe(tmp_path, "--resume", "runs:/0123456789abcdef0123456789abcdef")
    assert run.returncode == 2
    assert "no such MLflow run" in run.stdout and "Traceback" not in run.stdout


def test_resume_from_a_registered_model_starts_a_new_run_from_its_weights(trained_run):
    # the override example of docs/recipes/comet_32k.md, warm-started from the registered model
    run = run_recipe(trained_run.cwd, "--max-steps", "2", "--resume", "models:/comet-32k-tiny@champion",
                     "--tracking.register", "false",
                     command=shown("python recipes/comet_32k.py --preset tiny --data.seq_len 512 --optim.lr=1e-3",
                                   "recipes/comet_32k.md"))
    assert run.returncode == 0, run.stdout[-5000:]
    assert run.run_id != trained_run.run_id
    version = MlflowClient(trained_run.tracking_uri).get_model_version_by_alias("comet-32k-tiny", "champion")
    assert f"starting from the weights of models:/comet-32k-tiny/{version.version}" in run.stdout
    client = MlflowClient(trained_run.tracking_uri)
    fresh_first = client.get_metric_history(trained_run.run_id, "train/loss")[0].value
    warm_first = client.get_metric_history(run.run_id, "train/loss")[0].value
    assert warm_first < fresh_first - 0.5, (warm_first, fresh_first)
    params = client.get_run(run.run_id).data.params
    assert params["data.seq_len"] == "512" and float(params["optim.lr"]) == 1e-3


def test_the_quick_start_loads_and_evaluates_the_registered_model(trained_run):
    """The quick start's load and evaluation commands, as shown, in the directory of its training run."""
    load = shown("MLFLOW_TRACKING_URI=sqlite:///mlflow.db python -c \"import mlflow; print(mlflow.pyfunc.load_model("
                 "'models:/comet-32k-tiny@champion').predict(['The passkey is']))\"", "quickstart.md")
    evaluate = shown("longctx eval passkey --model models:/comet-32k-tiny@champion --lengths 1024,4096 --trials 2",
                     "quickstart.md")
    env = {**recipe_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", shlex.join(load)], cwd=trained_run.cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    texts = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert isinstance(texts, list) and len(texts) == 1 and isinstance(texts[0], str)
    out = subprocess.run(evaluate, cwd=trained_run.cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(summary["accuracy"]) == {"1024", "4096"} and len(summary["by_depth"]) == 5
