"""The parent run of a recipe of several jobs (framework.launch.stages), on a real SQLite MLflow store.

The stage jobs themselves (run_job on Ray Train) run in the recipes' end-to-end tests; here: what a
parent records, and what --resume finds in it."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from framework.config import ConfigError
from framework.job import TrackingConfig
from framework.launch.run import JobResult
from framework.launch.stages import RESULT_TAG, STAGE_TAG, Stages
from framework.tracking.checkpoints import CheckpointError


@pytest.fixture()
def tracking(tmp_path):
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="stages-test")


def _result(run_id: str) -> JobResult:
    return JobResult(run_id=run_id, tracking_uri="sqlite:///x.db", steps=3, registered_uri="models:/m@champion",
                     registered_version="2", checkpoint_path="/tmp/ckpt")


def test_a_new_parent_records_params_and_a_finished_stage_result(tracking):
    stages = Stages.open(tracking, run_name="study", params={"study.corpora": ["a", "b"]})
    run = stages.client.get_run(stages.run_id)
    assert run.info.run_name == "study" and run.data.params["study.corpora"] == "['a', 'b']"
    assert stages.done("lm-a") is None
    recorded = _result("0" * 32)
    stages.set_tag(RESULT_TAG.format("lm-a"), json.dumps(asdict(recorded)))
    again = Stages.open(tracking, run_name="study", resume=f"runs:/{stages.run_id}")
    assert again.run_id == stages.run_id
    assert again.done("lm-a") == recorded and again.done("lm-b") is None
    finished = again.finish(recorded)
    assert finished.run_id == stages.run_id and finished.registered_version == "2"
    assert again.client.get_run(stages.run_id).info.status == "FINISHED"


def test_resume_auto_takes_the_newest_parent_of_that_name_and_never_a_stage(tracking):
    first = Stages.open(tracking, run_name="study")
    newer = Stages.open(tracking, run_name="study")
    Stages.open(tracking, run_name="other")
    # a child stage run of the same name must not be taken for a parent
    newer.client.create_run(newer.experiment_id, run_name="study", tags={STAGE_TAG: f"{newer.run_id}/lm"})
    assert Stages.open(tracking, run_name="study", resume="auto").run_id == newer.run_id != first.run_id
    assert Stages.open(tracking, run_name="fresh-name", resume="auto").run_id not in (first.run_id, newer.run_id)


def test_a_resume_with_other_settings_is_refused_naming_them(tracking):
    params = {"study.steps": 400, "study.lr": 1e-3, "study.threads": 1, "launch.num_workers": 2,
              "tracking.experiment": "a", "study.models": ["ram", "comi"]}
    stages = Stages.open(tracking, run_name="study", params=params)
    changed = dict(params, **{"study.steps": 800, "study.models": ["ram"]})
    with pytest.raises(CheckpointError, match=r"study\.models \(logged \"\['ram', 'comi'\]\", now \"\['ram'\]\"\)"
                       r".*study\.steps \(logged '400', now '800'\).*Fix: rerun with the logged values"):
        Stages.open(tracking, run_name="study", resume=f"runs:/{stages.run_id}", params=changed)
    with pytest.raises(CheckpointError, match="study.steps"):  # auto finds the same parent
        Stages.open(tracking, run_name="study", resume="auto", params=changed)
    # how fast or where it runs, and tracking settings, may change; so may a key the free list names
    same = dict(params, **{"study.threads": 2, "launch.num_workers": 1, "tracking.experiment": "b"})
    assert Stages.open(tracking, run_name="study", resume="auto", params=same,
                       free_params=("study.threads",)).run_id == stages.run_id
    with pytest.raises(CheckpointError, match="study.threads"):
        Stages.open(tracking, run_name="study", resume="auto", params=same)


def test_resuming_a_run_that_is_not_a_parent_or_a_model_is_refused_with_the_fix(tracking):
    stages = Stages.open(tracking, run_name="study")
    child = stages.client.create_run(stages.experiment_id, run_name="lm").info.run_id
    with pytest.raises(CheckpointError, match="not the parent run"):
        Stages.open(tracking, run_name="study", resume=f"runs:/{child}")
    with pytest.raises(CheckpointError, match="--resume"):
        Stages.open(tracking, run_name="study", resume="runs:/" + "f" * 32)
    with pytest.raises(ConfigError, match="resumes its parent run only"):
        Stages.open(tracking, run_name="study", resume="models:/m@champion")


def test_metrics_and_artifacts_land_on_the_parent(tracking, tmp_path):
    stages = Stages.open(tracking, run_name="study")
    stages.log_metrics({"spearman/encoder": -0.5, "skipped": None})
    (tmp_path / "table.json").write_text("{}")
    stages.log_artifact(str(tmp_path / "table.json"))
    stages.log_dict({"a": 1}, "summary.json")
    run = stages.client.get_run(stages.run_id)
    assert run.data.metrics == {"spearman/encoder": -0.5}
    names = {f.path for f in stages.client.list_artifacts(stages.run_id)}
    assert names == {"table.json", "summary.json"}


def test_a_local_stage_is_a_child_run_whose_result_the_parent_keeps_and_resume_reuses(tracking):
    from framework.launch.stages import LOCAL_RESULT

    stages = Stages.open(tracking, run_name="study")
    calls = []
    small = stages.local("small", lambda: calls.append("small") or {"dir": "/x/reader", "steps": 3})
    big = stages.local("big", lambda: calls.append("big") or {"rows": ["x" * 100] * 200})  # over a tag's 8000
    assert small == {"dir": "/x/reader", "steps": 3} and calls == ["small", "big"]
    children = stages.client.search_runs([stages.experiment_id],
                                         filter_string=f"tags.`mlflow.parentRunId` = '{stages.run_id}'")
    assert sorted(c.data.tags[STAGE_TAG] for c in children) == [f"{stages.run_id}/big", f"{stages.run_id}/small"]
    assert {c.info.status for c in children} == {"FINISHED"}
    tags = stages.client.get_run(stages.run_id).data.tags
    assert json.loads(tags[RESULT_TAG.format("small")]) == small
    assert set(json.loads(tags[RESULT_TAG.format("big")])) == {"result_artifact", "run_id"}
    for child in children:
        assert LOCAL_RESULT in {f.path for f in stages.client.list_artifacts(child.info.run_id)}

    def never():
        raise AssertionError("a finished stage ran again")

    again = Stages.open(tracking, run_name="study", resume="auto")
    assert again.local("small", never) == small and again.local("big", never) == big

    def broken():
        raise RuntimeError("stage broke")

    with pytest.raises(RuntimeError, match="stage broke"):
        again.local("bad", broken)
    failed = again.client.search_runs([again.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = '{again.run_id}/bad'")
    assert [r.info.status for r in failed] == ["FAILED"]
    assert again.client.get_run(again.run_id).info.status == "FAILED"
    assert RESULT_TAG.format("bad") not in again.client.get_run(again.run_id).data.tags
    assert again.finish() is None and again.client.get_run(again.run_id).info.status == "FINISHED"
