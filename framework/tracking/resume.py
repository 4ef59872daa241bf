"""What `--resume` means, resolved on the driver before any worker starts.

    runs:/<run_id>            newest checkpoint of that run; continue the same run, step and data order
    models:/<name>@<alias>    (or models:/<name>/<version>) weights of a registered model; a new run
    auto                      the newest run with this run name that has a checkpoint; else a fresh start
    <dir>                     a local checkpoint directory (with manifest.json)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from framework.tracking.checkpoints import CheckpointError, newest_run_checkpoint, read_manifest
from framework.tracking.store import require_run


@dataclass(frozen=True)
class ResumePlan:
    run_id: str | None = None            # an MLflow run to continue
    checkpoint_artifact: str | None = None   # artifact path inside run_id (checkpoints/step_...)
    checkpoint_dir: str | None = None    # a local checkpoint directory
    init_weights_uri: str | None = None  # models:/... whose weights start a new run

    @property
    def continues_run(self) -> bool:
        return self.run_id is not None


def plan_resume(resume: str | None, client, experiment_id: str | None, run_name: str | None) -> ResumePlan:
    if not resume:
        return ResumePlan()
    if resume.startswith("runs:/"):
        run_id = resume[len("runs:/"):].strip("/").split("/")[0]
        require_run(client, run_id, "--resume", resume, CheckpointError)
        artifact = newest_run_checkpoint(client, run_id)
        if artifact is None:
            raise CheckpointError(f"--resume {resume}: the run has no complete checkpoint under checkpoints/. "
                                  "Fix: resume a run that reached launch.checkpoint_every_n_steps, or start fresh")
        return ResumePlan(run_id=run_id, checkpoint_artifact=artifact)
    if resume.startswith("models:/"):
        return ResumePlan(init_weights_uri=_pin_model_version(resume, client))
    if resume == "auto":
        if experiment_id is None:
            return ResumePlan()
        runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=20)
        for run in runs:
            artifact = newest_run_checkpoint(client, run.info.run_id)
            if artifact:
                return ResumePlan(run_id=run.info.run_id, checkpoint_artifact=artifact)
        return ResumePlan()
    if os.path.isdir(resume):
        manifest = read_manifest(resume)
        return ResumePlan(run_id=manifest.get("mlflow_run_id"), checkpoint_dir=os.path.abspath(resume))
    raise CheckpointError(f"--resume {resume!r}: not runs:/<run_id>, models:/<name>@<alias>, auto, or an existing "
                          "checkpoint directory. Fix: pass one of those")


def _pin_model_version(uri: str, client) -> str:
    """models:/<name>@<alias> or models:/<name>/<version> -> models:/<name>/<version>, checked to exist."""
    ref = uri[len("models:/"):].strip("/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        elif "/" in ref:
            name, version = ref.rsplit("/", 1)
            if version == "latest":
                version = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            else:
                client.get_model_version(name, version)
        else:
            raise ValueError("no alias or version")
    except ValueError:
        raise CheckpointError(f"--resume {uri}: expected models:/<name>@<alias> or models:/<name>/<version>. "
                              "Fix: e.g. --resume models:/comet-32k@champion") from None
    except Exception as err:  # noqa: BLE001 - MlflowException or a connection error
        raise CheckpointError(f"--resume {uri}: no such registered model version in this store ({_short(err)}). "
                              "Fix: check the name and alias in the MLflow UI (Models), and that --tracking-uri "
                              "points at the store it was registered in") from None
    return f"models:/{name}/{version}"


def _short(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]
