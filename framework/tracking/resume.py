"""What `--resume` means, resolved on the driver before any worker starts.

    runs:/<run_id>            newest checkpoint of that run; continue the same run, step and data order
    models:/<name>@<alias>    (or models:/<name>/<version>) weights of a registered model; a new run
    auto                      the newest unfinished run with this run name that has a checkpoint; else a
                              fresh start (a FINISHED run is never continued: it ends the search)
    <dir>                     a local checkpoint directory (with manifest.json)

A run continued through runs:/ or auto must have been logged with the same config: every param
outside RESUME_FREE_PARAMS (which change only the length, layout or bookkeeping of a run) must
match, or the resume is refused naming the differing keys, unless `force` (--resume-force).
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
    forced_changes: dict | None = None   # resumed with force despite these param changes {key: [logged, new]}

    @property
    def continues_run(self) -> bool:
        return self.run_id is not None


# Statuses of a run that `auto` may continue: a crashed driver leaves RUNNING, a failure FAILED, a stop KILLED.
RESUMABLE_STATUSES = ("RUNNING", "FAILED", "KILLED")

# Params that may differ between a run and its resume: how long it trains (max_steps, epochs), where and on
# what it runs (workers, accumulation, GPUs, storage), checkpoint bookkeeping and tracking. Every other param (model,
# optim, data, the method's own section, launch.seed, strategy, precision) changes what is trained.
RESUME_FREE_PARAMS = frozenset({
    "launch.max_steps", "data.epochs", "launch.num_workers", "launch.use_gpu", "launch.pipeline_size",
    "launch.cpus_per_worker", "launch.storage_path", "launch.max_failures", "launch.checkpoint_every_n_steps",
    "launch.keep_checkpoints", "launch.run_name", "data.loader_workers", "launch.accumulate_grad_batches",
})
RESUME_FREE_SECTIONS = ("tracking.", "eval.")  # eval: what runs on the registered model after training
# sections renamed since older runs logged them: {old prefix: new prefix} (`method` is now `optim`)
RENAMED_PARAM_PREFIXES = {"method.": "optim."}
FORCED_TAG = "longctx.resume.forced_changes"  # set on a run resumed with force: {key: [logged, new]}


def config_changes(logged: dict, params: dict, free=()) -> dict:
    """{key: (logged value, new value)} for every param that changes training and differs. Keys on one side
    only (a field added or removed by a newer longctx) are not compared; an older run's keys of a renamed
    section (RENAMED_PARAM_PREFIXES) are compared under the new name. free: more keys that may differ."""
    logged = dict(logged)
    for key in [k for k in logged if k.startswith(tuple(RENAMED_PARAM_PREFIXES))]:
        old = next(p for p in RENAMED_PARAM_PREFIXES if key.startswith(p))
        logged.setdefault(RENAMED_PARAM_PREFIXES[old] + key[len(old):], logged[key])
    return {k: (logged[k], v) for k, v in sorted(params.items())
            if k in logged and logged[k] != v and k not in RESUME_FREE_PARAMS and k not in free
            and not k.startswith(RESUME_FREE_SECTIONS)}


def describe_changes(changes: dict, limit: int = 8) -> str:
    """config_changes() for an error message: "key (logged 'a', now 'b'), ..." (the first `limit`)."""
    shown = ", ".join(f"{k} (logged {a!r}, now {b!r})" for k, (a, b) in list(changes.items())[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def _check_config(run, params: dict | None, resume: str, force: bool) -> dict:
    """The training-relevant differences between `run`'s logged params and `params`; raises unless force."""
    if params is None:
        return {}
    changes = config_changes(run.data.params, params)
    if changes and not force:
        raise CheckpointError(f"--resume {resume}: run {run.info.run_id} was trained with another config: "
                              f"{describe_changes(changes)}. Fix: rerun with the logged values, start a new run (drop --resume, "
                              "or another --run-name), or pass --resume-force to continue it anyway")
    return changes


def plan_resume(resume: str | None, client, experiment_id: str | None, run_name: str | None,
                params: dict | None = None, force: bool = False) -> ResumePlan:
    """params: the new job's flat params; a continued run must have logged the same ones (see
    RESUME_FREE_PARAMS), else CheckpointError unless force. None skips the check."""
    if not resume:
        return ResumePlan()
    if resume.startswith("runs:/"):
        run_id = resume[len("runs:/"):].strip("/").split("/")[0]
        run = require_run(client, run_id, "--resume", resume, CheckpointError)
        artifact = newest_run_checkpoint(client, run_id)
        if artifact is None:
            raise CheckpointError(f"--resume {resume}: the run has no complete checkpoint under checkpoints/. "
                                  "Fix: resume a run that reached launch.checkpoint_every_n_steps, or start fresh")
        changes = _check_config(run, params, resume, force)
        return ResumePlan(run_id=run_id, checkpoint_artifact=artifact, forced_changes=_as_lists(changes))
    if resume.startswith("models:/"):
        return ResumePlan(init_weights_uri=_pin_model_version(resume, client))
    if resume == "auto":
        if experiment_id is None:
            return ResumePlan()
        runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=20)
        for run in runs:
            if run.info.status not in RESUMABLE_STATUSES:
                if run.info.status == "FINISHED":
                    print(f"[longctx] --resume auto: run {run.info.run_id} ({run_name}) has FINISHED, so it "
                          "is not continued; starting a new run")
                    break  # the runs before it belong to a job that has finished
                continue
            artifact = newest_run_checkpoint(client, run.info.run_id)
            if artifact:
                changes = _check_config(run, params, resume, force)
                return ResumePlan(run_id=run.info.run_id, checkpoint_artifact=artifact,
                                  forced_changes=_as_lists(changes))
        return ResumePlan()
    if os.path.isdir(resume):
        manifest = read_manifest(resume)
        return ResumePlan(run_id=manifest.get("mlflow_run_id"), checkpoint_dir=os.path.abspath(resume))
    raise CheckpointError(f"--resume {resume!r}: not runs:/<run_id>, models:/<name>@<alias>, auto, or an existing "
                          "checkpoint directory. Fix: pass one of those")


def _as_lists(changes: dict) -> dict | None:
    return {k: list(v) for k, v in changes.items()} or None


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
