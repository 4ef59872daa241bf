"""Resume on another world size: a run trained on 2 workers continues on 1 from its step-2 checkpoint. The
schedule counts samples, so the resumed attempt trains the samples the plan has left (in more, smaller
steps), records the change on the MLflow run, and its checkpoints keep the run's plan. Real Ray, real MLflow."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from recipe_runs import run_recipe

pytestmark = pytest.mark.timeout(900)
ARGS = ["--launch.checkpoint_every_n_steps", "2", "--max-steps", "4", "--tracking.register", "false"]


def _newest_manifest(client, run_id, dst):
    newest = sorted(a.path for a in client.list_artifacts(run_id, "checkpoints"))[-1]
    return json.loads(Path(client.download_artifacts(run_id, newest, str(dst)), "manifest.json").read_text())


def test_two_workers_resume_on_one_and_train_the_samples_left(tmp_path):
    first = run_recipe(tmp_path, *ARGS, "--num-workers", "2")
    assert first.returncode == 0, first.stdout[-5000:]
    client = MlflowClient(first.tracking_uri)
    run_id = first.run_id
    # Ray keeps every checkpoint of the attempt (MLflow only the newest): take the one of step 2
    local = next(tmp_path.glob("outputs/ray/*/step_000000002"))
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["data"] == {"samples_consumed": 8, "global_batch": 4, "seed": 0}
    assert manifest["schedule"] == {"plan_steps": 4, "plan_batch": 4}

    # the tiny preset takes 2 samples a worker: 16 samples planned (4 steps of 4), 8 consumed at step 2;
    # on one worker that is 4 more steps of 2
    resumed = run_recipe(tmp_path, *ARGS, "--num-workers", "1", "--resume", str(local),
                         "--launch.storage_path", str(tmp_path / "ray-resumed"))
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    out = resumed.stdout
    assert "worker group of 1 starting from step 2" in out, out[-5000:]
    assert "resumed on another world size: step 2: 2 -> 1 workers, global batch 4 -> 2" in out, out[-5000:]
    assert "this attempt trains to step 6" in out
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "2 -> 1 workers" in run.data.tags["longctx.resume.world_size_changes"]
    final = _newest_manifest(client, run_id, tmp_path / "dl")
    assert final["world_size"] == 1 and final["data"]["samples_consumed"] == 16 and final["data"]["global_batch"] == 2
    assert final["schedule"] == {"plan_steps": 4, "plan_batch": 4}  # the plan of the run, not of the attempt
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(6)), steps  # steps 2 and 3 of the first attempt are not logged twice
