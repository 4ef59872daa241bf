"""--resume resolution against a real MLflow store: runs:/, auto, and the errors."""

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from framework.tracking.checkpoints import CheckpointError
from framework.tracking.resume import ResumePlan, plan_resume


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


# --resume auto continues only an unfinished run, and no run is continued under another config


def _comet_recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("comet_32k", Path(__file__).parents[2] / "recipes" / "comet_32k.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def _logged_run(client, exp, tmp_path, status, params=None, step=5, name="job"):
    run_id = client.create_run(exp, run_name=name).info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    if step is not None:
        _log_ckpt(client, run_id, step, tmp_path)
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    time.sleep(0.01)
    return run_id


@pytest.mark.parametrize("status", ["FAILED", "KILLED", "RUNNING"])
def test_auto_continues_an_unfinished_run(client, tmp_path, status):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = _logged_run(client, exp, tmp_path, status)
    assert plan_resume("auto", client, exp, "job").run_id == run_id


def test_auto_starts_a_new_run_when_the_newest_run_finished(client, tmp_path):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    _logged_run(client, exp, tmp_path, "FAILED")             # an attempt of the job before the finished one
    _logged_run(client, exp, tmp_path, "FINISHED", step=30)  # the job then finished
    assert plan_resume("auto", client, exp, "job") == ResumePlan()
    # a newer attempt that crashed before its first checkpoint does not bring the old ones back
    _logged_run(client, exp, tmp_path, "FAILED", step=None)
    assert plan_resume("auto", client, exp, "job") == ResumePlan()
    newest = _logged_run(client, exp, tmp_path, "KILLED", step=4)
    assert plan_resume("auto", client, exp, "job").run_id == newest


PARAMS = {"launch.seed": "0", "optim.lr": "0.003", "launch.max_steps": "30", "launch.num_workers": "1",
          "tracking.model_name": "m"}


@pytest.mark.parametrize("resume", ["auto", "runs"])
def test_a_changed_seed_is_refused_naming_the_key_unless_forced(client, tmp_path, resume):
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = _logged_run(client, exp, tmp_path, "FAILED", params=PARAMS)
    uri = "auto" if resume == "auto" else f"runs:/{run_id}"
    # length, workers and tracking may change on a resume
    same = {**PARAMS, "launch.max_steps": "60", "launch.num_workers": "2", "tracking.model_name": "n",
            "comet.new_field": "1"}  # a field the logged run predates is not compared
    assert plan_resume(uri, client, exp, "job", params=same).run_id == run_id
    changed = {**PARAMS, "launch.seed": "1", "launch.max_steps": "60"}
    with pytest.raises(CheckpointError) as err:
        plan_resume(uri, client, exp, "job", params=changed)
    message = str(err.value)
    assert "launch.seed (logged '0', now '1')" in message and "--resume-force" in message
    assert "max_steps" not in message and "\n" not in message
    plan = plan_resume(uri, client, exp, "job", params=changed, force=True)
    assert plan.run_id == run_id and plan.forced_changes == {"launch.seed": ["0", "1"]}


def test_a_run_logged_before_the_optim_rename_is_compared_under_the_new_name():
    """Runs logged when the `optim` section was `method` hold method.* params: they are compared as optim.*."""
    from framework.tracking.resume import config_changes

    old = {"launch.seed": "0", "method.lr": "0.003"}
    assert config_changes(old, PARAMS) == {}
    assert config_changes(old, {**PARAMS, "optim.lr": "0.001"}) == {"optim.lr": ("0.003", "0.001")}


def test_run_job_refuses_a_changed_config_and_force_records_the_change(tmp_path, capsys):
    """The driver side, on the real tiny config and store (no Ray: the run is opened, not trained)."""
    from framework.launch.run import _open_run, flat_params
    from framework.tracking.resume import FORCED_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    cfg = _comet_recipe().tiny()
    cfg.tracking.tracking_uri = uri
    run_id, _ = _open_run(cfg, client, uri, None)
    assert client.get_run(run_id).data.params == flat_params(cfg)
    _log_ckpt(client, run_id, 10, tmp_path)
    client.set_terminated(run_id, status="KILLED")
    cfg.launch.seed = 7
    with pytest.raises(CheckpointError, match=r"launch\.seed \(logged '0', now '7'\)"):
        _open_run(cfg, client, uri, "auto")
    again, plan = _open_run(cfg, client, uri, "auto", resume_force=True)
    assert again == run_id and plan.checkpoint_artifact == "checkpoints/step_000000010"
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and json.loads(run.data.tags[FORCED_TAG]) == {"launch.seed": ["0", "7"]}
    assert run.data.params["launch.seed"] == "0"  # the logged params are kept as they were
    client.set_terminated(run_id, status="FINISHED")
    fresh, plan = _open_run(cfg, client, uri, "auto")
    assert fresh != run_id and not plan.continues_run and "has FINISHED" in capsys.readouterr().out


def test_resume_force_needs_resume(tmp_path, capsys):
    from framework.launch.recipe_cli import EXIT_BAD_INPUT, main

    presets = {"tiny": _comet_recipe().tiny}
    with pytest.raises(SystemExit) as exit_:
        main(presets, "tiny", "d", argv=["--resume-force"])
    assert exit_.value.code == EXIT_BAD_INPUT and "--resume-force continues a --resume" in capsys.readouterr().err
