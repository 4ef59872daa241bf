"""Recipes of several training jobs (a study, a label-then-train pipeline) under one parent MLflow run.

    stages = Stages.open(tracking_cfg, run_name="ae_study", resume=args.resume, params={...})
    lm = stages.job("lm-austen", lm_cfg)      # run_job as a child run; a JobResult
    stages.log_metrics({"spearman/encoder": -0.6}); stages.log_artifact("outputs/ae_study/scatter.png")
    return stages.finish(lm)                  # the parent FINISHED; the JobResult the recipe reports

Each stage is a normal job (Ray Train, checkpoints, a registered model) whose MLflow run is a child
of the parent (tag ``mlflow.parentRunId``) and carries ``longctx.stage = <parent id>/<stage>``.
When a stage finishes, the parent records its outcome in tags ``longctx.stage.<stage>.*``.

Resume (``--resume runs:/<parent id>``, or ``auto``: the newest parent run of this run name) must
come with the params the parent logged (apart from ``free_params`` and framework.tracking.resume's
RESUME_FREE_PARAMS), or it is refused naming the differing keys, since the finished stages it reuses
were trained with the logged ones. Finished stages are not run again (their recorded JobResult is
returned); an unfinished stage continues its own run from its newest checkpoint, or starts again when
it reached none.

A stage may also run in this process (``stages.local(stage, fn)``, e.g. a small study's stage
trained by an in-process Lightning Trainer): a child run tagged like a job's, ``fn()``'s JSON result
recorded on the parent as ``longctx.stage.<stage>.result`` (and on the child as ``stage_result.json``;
a result longer than an MLflow tag holds is kept there only, the tag pointing to it). On resume a
finished local stage is not run again: its recorded result is returned; an unfinished one runs
again from its start (it has no checkpoints).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

from framework.config import ConfigError
from framework.job import TrackingConfig
from framework.launch.run import MAX_PARAM_CHARS, JobResult, LaunchError, run_job
from framework.tracking.checkpoints import CheckpointError, newest_run_checkpoint
from framework.tracking.redact import redact, redact_params
from framework.tracking.store import check_store, default_artifact_location, ensure_experiment, resolve_tracking_uri

STAGES_TAG = "longctx.stages"      # on the parent: the recipe's run of several jobs
STAGE_TAG = "longctx.stage"        # on a child: "<parent id>/<stage>"
RESULT_TAG = "longctx.stage.{}.result"   # on the parent: the stage's JobResult as JSON
LOCAL_RESULT = "stage_result.json"       # on a local stage's child run: its whole result
TAG_LIMIT = 8000                         # MLflow's longest tag value


@dataclass
class Stages:
    client: object
    tracking_uri: str
    experiment_id: str
    run_id: str
    tags: dict

    @classmethod
    def open(cls, tracking: TrackingConfig, run_name: str, resume: str | None = None,
             params: dict | None = None, free_params: tuple = ()) -> "Stages":
        """Open the parent run: a new one, or the one `resume` names (runs:/<id> or auto), whose logged
        params must equal `params` but for `free_params` (keys that change no stage's outcome)."""
        from mlflow import MlflowClient

        uri = resolve_tracking_uri(tracking)
        check_store(uri, tracking.connect_timeout_s)
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, tracking.experiment, default_artifact_location(uri))
        run_id = _parent_to_resume(client, experiment_id, run_name, resume)
        if run_id is None:
            run = client.create_run(experiment_id, run_name=run_name,
                                    tags={STAGES_TAG: "1", "longctx.recipe": _recipe()})
            run_id = run.info.run_id
            if params:
                from mlflow.entities import Param

                batch = [Param(k, v) for k, v in _as_logged(params).items()]
                for i in range(0, len(batch), 100):
                    client.log_batch(run_id, params=batch[i:i + 100])
            print(f"[longctx] MLflow run {run_id} ({run_name}): the parent of this recipe's jobs")
        else:
            _check_same_params(client.get_run(run_id), params, free_params, resume)
            client.update_run(run_id, status="RUNNING")
            print(f"[longctx] resuming the jobs of MLflow run {run_id} ({run_name})")
        tags = dict(client.get_run(run_id).data.tags)
        return cls(client, uri, experiment_id, run_id, tags)

    def done(self, stage: str) -> JobResult | None:
        """The recorded result of a stage that finished in this parent run, else None."""
        text = self.tags.get(RESULT_TAG.format(stage))
        return JobResult(**json.loads(text)) if text else None

    def job(self, stage: str, cfg, resume: str | None = None) -> JobResult:
        """Run `cfg` (a TrainJob) as the child stage `stage`, unless it finished before.
        resume: for a fresh stage, e.g. models:/... to start from registered weights."""
        finished = self.done(stage)
        if finished is not None:
            print(f"[longctx] stage {stage}: finished before (run {finished.run_id}), not run again")
            return finished
        cfg.tracking.tracking_uri = self.tracking_uri
        unfinished = self._unfinished_child(stage)
        if unfinished is not None:
            resume = f"runs:/{unfinished}"
            print(f"[longctx] stage {stage}: continuing run {unfinished} from its newest checkpoint")
        print(f"[longctx] stage {stage}: {cfg.launch.run_name}")
        try:
            result = run_job(cfg, resume=resume, tags={"mlflow.parentRunId": self.run_id,
                                                       STAGE_TAG: f"{self.run_id}/{stage}"})
        except BaseException:
            self._set_status("FAILED")
            raise
        self.set_tag(RESULT_TAG.format(stage), json.dumps(redact(asdict(result))))
        return result

    def local(self, stage: str, fn) -> dict:
        """Run ``fn()`` in this process as the child stage `stage`, unless it finished before; returns its
        result, a JSON-able dict (as JSON gives it back, so a resumed run sees what a fresh one does)."""
        text = self.tags.get(RESULT_TAG.format(stage))
        if text:
            recorded = json.loads(text)
            if set(recorded) == {"result_artifact", "run_id"}:  # too long for a tag: kept on the child
                recorded = _load_artifact_dict(self.client, recorded)
            print(f"[longctx] stage {stage}: finished before, not run again")
            return recorded
        child = self.client.create_run(self.experiment_id, run_name=stage,
                                       tags={"mlflow.parentRunId": self.run_id, STAGE_TAG: f"{self.run_id}/{stage}"})
        child_id = child.info.run_id
        print(f"[longctx] stage {stage}: MLflow run {child_id} (in this process)")
        try:
            result = json.loads(json.dumps(fn()))
        except BaseException:
            self._set_status("FAILED", child_id)
            self._set_status("FAILED")
            raise
        recorded = redact(result)
        self.client.log_dict(child_id, recorded, LOCAL_RESULT)
        text = json.dumps(recorded)
        if len(text) > TAG_LIMIT:
            text = json.dumps({"result_artifact": LOCAL_RESULT, "run_id": child_id})
        self._set_status("FINISHED", child_id)
        self.set_tag(RESULT_TAG.format(stage), text)
        return result

    def _unfinished_child(self, stage: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{STAGE_TAG}` = '{self.run_id}/{stage}'",
                                       order_by=["attributes.start_time DESC"], max_results=5)
        for run in runs:
            if newest_run_checkpoint(self.client, run.info.run_id):
                return run.info.run_id
        return None

    # ------------------------------------------------------------------ the parent's own records
    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)
        self.tags[key] = value

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 500])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_dict(self, payload: dict, name: str) -> None:
        self.client.log_dict(self.run_id, redact(payload), name)

    def finish(self, result: JobResult | None = None) -> JobResult | None:
        """Mark the parent FINISHED; returns `result` (the job whose model the recipe reports) with the
        parent as its run, so the recipe's "MLflow run ..." line names the parent (None without one)."""
        self._set_status("FINISHED")
        if result is None:
            return None
        return JobResult(run_id=self.run_id, tracking_uri=self.tracking_uri, steps=result.steps,
                         registered_uri=result.registered_uri, registered_version=result.registered_version,
                         checkpoint_path=result.checkpoint_path)

    def fail(self) -> None:
        self._set_status("FAILED")

    def _set_status(self, status: str, run_id: str | None = None) -> None:
        run_id = run_id or self.run_id
        try:
            self.client.set_terminated(run_id, status=status)
        except Exception as err:  # noqa: BLE001 - never hide the real outcome behind a tracking hiccup
            print(f"[longctx] warning: could not mark MLflow run {run_id} {status}: {err}", file=sys.stderr)


def _load_artifact_dict(client, pointer: dict) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(pointer["run_id"], pointer["result_artifact"], tmp)
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)


def _as_logged(params: dict) -> dict:
    """Params as MLflow keeps them: secrets redacted, values as (at most MAX_PARAM_CHARS characters of) text."""
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in redact_params(params).items()}


def _check_same_params(run, params: dict | None, free_params, resume: str) -> None:
    """Refuse to resume a parent whose logged params differ from `params` in a key outside `free_params`."""
    from framework.tracking.resume import config_changes, describe_changes

    changes = config_changes(run.data.params, _as_logged(params), free=free_params) if params else {}
    if changes:
        raise CheckpointError(f"--resume {resume}: parent run {run.info.run_id} ran its stages with other settings: "
                              f"{describe_changes(changes)}. Its finished stages would be reused as if trained with "
                              "the new ones. Fix: rerun with the logged values, or start a new run (drop --resume)")


def _parent_to_resume(client, experiment_id: str, run_name: str, resume: str | None) -> str | None:
    if not resume:
        return None
    if resume.startswith("runs:/"):
        from framework.tracking.store import require_run

        run_id = resume[len("runs:/"):].strip("/").split("/")[0]
        run = require_run(client, run_id, "--resume", resume, CheckpointError)
        if STAGES_TAG not in run.data.tags:
            raise CheckpointError(f"--resume {resume}: that run is not the parent run of this recipe (it has no "
                                  f"{STAGES_TAG} tag; perhaps one of its stages). Fix: pass the parent's runs:/<id>, "
                                  "printed first when the recipe started, or --resume auto")
        return run_id
    if resume == "auto":
        runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}' and "
                                                                 f"tags.`{STAGES_TAG}` = '1'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None
    raise ConfigError(f"--resume {resume!r}: a recipe of several jobs resumes its parent run only. "
                      "Fix: --resume runs:/<parent run id> or --resume auto")


def _recipe() -> str:
    return os.path.basename(sys.argv[0])


__all__ = ["LaunchError", "Stages"]
