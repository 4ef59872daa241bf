"""--resume resolution against a real MLflow store: runs:/, auto, and the errors."""

import json
import time

import pytest
from mlflow import MlflowClient

from framework.tracking.checkpoints import CheckpointError
from framework.tracking.resume import plan_resume


@pytest.fixture
def client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _log_ckpt(client, run_id, step, tmp_path, complete=True):
    d = tmp_path / f"c{run_id[:6]}{step}"
    d.mkdir()
    (d / "checkpoint.ckpt").write_bytes(b"x")
    client.log_artifact(run_id, str(d / "checkpoint.ckpt"), f"checkpoints/step_{step:09d}")
    if complete:
        (d / "manifest.json").write_text(json.dumps({"format": 1, "step": step, "files": ["checkpoint.ckpt"]}))
        client.log_artifact(run_id, str(d / "manifest.json"), f"checkpoints/step_{step:09d}")


def test_runs_uri_picks_the_newest_complete_checkpoint(client, tmp_path):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp, run_name="job").info.run_id
    _log_ckpt(client, run_id, 10, tmp_path)
    _log_ckpt(client, run_id, 20, tmp_path)
    _log_ckpt(client, run_id, 30, tmp_path, complete=False)  # an upload cut short: no manifest
    plan = plan_resume(f"runs:/{run_id}", client, exp, "job")
    assert plan.run_id == run_id and plan.checkpoint_artifact == "checkpoints/step_000000020"


def test_auto_finds_the_newest_run_of_the_same_name_with_a_checkpoint(client, tmp_path):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    old = client.create_run(exp, run_name="job").info.run_id
    _log_ckpt(client, old, 5, tmp_path)
    time.sleep(0.01)
    other = client.create_run(exp, run_name="other-job").info.run_id
    _log_ckpt(client, other, 7, tmp_path)
    time.sleep(0.01)
    client.create_run(exp, run_name="job")  # newest, but crashed before its first checkpoint
    plan = plan_resume("auto", client, exp, "job")
    assert plan.run_id == old and plan.checkpoint_artifact == "checkpoints/step_000000005"
    assert plan_resume("auto", client, exp, "never-ran") == plan_resume(None, client, exp, "never-ran")


def test_models_uri_starts_a_new_run_from_the_pinned_version(client, tmp_path):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.create_registered_model("comet")
    for _ in range(2):
        client.create_model_version("comet", (tmp_path / "art").as_uri(), run_id=run_id)
    client.set_registered_model_alias("comet", "champion", "1")
    plan = plan_resume("models:/comet@champion", client, None, "job")
    assert not plan.continues_run and plan.init_weights_uri == "models:/comet/1"
    assert plan_resume("models:/comet/latest", client, None, "job").init_weights_uri == "models:/comet/2"
    with pytest.raises(CheckpointError, match="no such registered model version"):
        plan_resume("models:/comet@missing", client, None, "job")
    with pytest.raises(CheckpointError, match="no such registered model version"):
        plan_resume("models:/other/1", client, None, "job")


@pytest.mark.parametrize("uri, message", [
    ("runs:/0123456789abcdef0123456789abcdef", "no such MLflow run"),
    ("s3://bucket/nowhere", "not runs:/<run_id>, models:/<name>@<alias>, auto"),
])
def test_bad_resume_uris_are_clear_errors(client, uri, message):
    with pytest.raises(CheckpointError, match=message):
        plan_resume(uri, client, None, "job")


def test_a_run_without_checkpoints_cannot_be_resumed(client, tmp_path):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp, run_name="job").info.run_id
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        plan_resume(f"runs:/{run_id}", client, exp, "job")
