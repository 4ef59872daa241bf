"""The driver: check the job, open the MLflow run, start Ray Train, register the model.

    result = run_job(cfg, resume="runs:/<id>")   # what recipes call
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from framework.config import ConfigError, to_dict
from framework.job import PIPELINE_STRATEGY, TrainJob
from framework.methods.registry import method_for
from framework.tracking.redact import redact, redact_text
from framework.tracking.store import (TrackingError, check_store, default_artifact_location, ensure_experiment,
                                      resolve_tracking_uri)

MAX_PARAM_CHARS = 6000


class LaunchError(RuntimeError):
    """The job could not start or finish; the message names the cause and the fix."""


class Preempted(LaunchError):
    """The driver got SIGTERM; the workers checkpointed the step they reached and the run is KILLED."""


@dataclass
class JobResult:
    run_id: str
    tracking_uri: str
    steps: int
    registered_uri: str | None
    registered_version: str | None
    checkpoint_path: str | None

    @property
    def pinned_model_uri(self) -> str | None:
        """models:/<name>/<version>: exactly the version this job registered (an alias may move on)."""
        if not self.registered_uri:
            return None
        name = self.registered_uri[len("models:/"):].split("@")[0]
        return f"models:/{name}/{self.registered_version}"


def validate(cfg: TrainJob) -> None:
    """Checks across sections, before any worker starts: the method's own, then the shared ones."""
    spec = method_for(cfg)
    if cfg.launch.strategy == PIPELINE_STRATEGY and not spec.pipeline:
        raise ConfigError(f"launch.strategy=pipeline is CoMeT's layer pipeline over chunks; the {spec.name!r} method "
                          "has no chunks to split. Fix: --launch.strategy ddp (or fsdp)")
    if cfg.launch.strategy not in spec.strategies:
        raise ConfigError(f"launch.strategy={cfg.launch.strategy} cannot train the {spec.name!r} method (its "
                          f"MethodSpec lists {list(spec.strategies)}). Fix: --launch.strategy {spec.strategies[0]}")
    _check_local_paths(cfg)
    spec.validate(cfg)
    import data_pipelines
    from data_pipelines.factory import validate_spec

    from framework.launch.data import source_spec

    try:
        validate_spec(source_spec(cfg.data))
    except data_pipelines.DataConfigError as err:
        raise ConfigError(f"data: {err} (set it with --data.options '{{\"path\": ...}}' or --data.kind)") from err
    if not cfg.launch.use_gpu and cfg.launch.precision == "16-mixed":
        raise ConfigError("launch.precision=16-mixed needs a GPU. Fix: --launch.precision 32-true, or --use-gpu")


def _check_local_paths(cfg: TrainJob) -> None:
    """A model or tokenizer given as a filesystem path must exist here, before workers try (and retry) it."""
    for name in ("base", "tokenizer"):
        value = getattr(cfg.model, name)
        if value and value.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(value)):
            raise ConfigError(f"model.{name}={value!r}: no such directory. Fix: point at a directory written by "
                              "save_pretrained (for SmolLM2: bash cluster/setup_smollm2.sh), or a model id")


def flat_params(cfg: TrainJob) -> dict:
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and prefix.count(".") < 1:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            text = json.dumps(value) if not isinstance(value, str) else value
            out[prefix] = text[:MAX_PARAM_CHARS]

    walk("", redact(to_dict(cfg)))  # no credential (storage_options, a user:password URI) reaches MLflow
    return out


def connect_ray() -> None:
    """Attach to RAY_ADDRESS / the job's cluster / the newest local `ray start`; else start an embedded one."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(log_to_driver=True)
    except ConnectionError as err:
        raise LaunchError(
            f"could not reach the Ray cluster ({err}). Fix: check RAY_ADDRESS (now {os.environ.get('RAY_ADDRESS')!r}) "
            "and that `ray status` works; for token auth set RAY_AUTH_MODE=token; unset RAY_ADDRESS to start a "
            "local cluster") from None


def _storage(cfg: TrainJob) -> tuple[str, object | None]:
    """Ray's storage_path (absolute for local paths) and, for fsspec-only schemes, a pyarrow filesystem."""
    path = cfg.launch.storage_path or str(Path.cwd() / "outputs" / "ray")
    if "://" not in path:
        return str(Path(path).expanduser().resolve()), None
    scheme = path.split("://", 1)[0]
    import pyarrow.fs

    try:
        pyarrow.fs.FileSystem.from_uri(path)
        return path, None
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError):
        import fsspec

        fs, root = fsspec.core.url_to_fs(path)
        handler = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
        if scheme == "memory":
            raise ConfigError("launch.storage_path on memory:// is not shared between Ray workers. "
                              "Fix: use a local path, s3://, gs:// or another shared store")
        return root, handler


def _open_run(cfg: TrainJob, client, uri: str, resume: str | None, tags: dict | None = None,
              resume_force: bool = False):
    from framework.tracking.resume import FORCED_TAG, plan_resume

    experiment_id = ensure_experiment(client, cfg.tracking.experiment, default_artifact_location(uri))
    plan = plan_resume(resume, client, experiment_id, cfg.launch.run_name, params=flat_params(cfg),
                       force=resume_force)
    if plan.continues_run:
        run_id = plan.run_id
        client.update_run(run_id, status="RUNNING")
        if plan.forced_changes:  # params cannot be relogged: keep what changed next to the logged ones
            client.set_tag(run_id, FORCED_TAG, json.dumps(plan.forced_changes)[:MAX_PARAM_CHARS])
            print(f"[longctx] warning: --resume-force: continuing run {run_id} despite changed "
                  f"{', '.join(plan.forced_changes)} (recorded in tag {FORCED_TAG})", file=sys.stderr)
        print(f"[longctx] resuming MLflow run {run_id} from {plan.checkpoint_artifact or plan.checkpoint_dir}")
    else:
        tags = {"longctx.resume": resume or "", "longctx.recipe": os.path.basename(sys.argv[0]), **(tags or {})}
        run = client.create_run(experiment_id, run_name=cfg.launch.run_name, tags=tags)
        run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(cfg).items()]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        print(f"[longctx] MLflow run {run_id} ({cfg.launch.run_name}) in experiment {cfg.tracking.experiment!r}")
    return run_id, plan


def run_job(cfg: TrainJob, resume: str | None = None, tags: dict | None = None,
            resume_force: bool = False) -> JobResult:
    """Train `cfg` on Ray Train and register the model. resume: see framework.tracking.resume. tags:
    extra tags of a new MLflow run (e.g. mlflow.parentRunId, for the stages of a study). resume_force:
    continue the run even when its logged config differs in a training-relevant param."""
    from mlflow import MlflowClient

    validate(cfg)
    uri = resolve_tracking_uri(cfg.tracking)
    check_store(uri, cfg.tracking.connect_timeout_s)
    print(f"[longctx] MLflow tracking store: {redact_text(uri)}")
    client = MlflowClient(uri)
    run_id, plan = _open_run(cfg, client, uri, resume, tags, resume_force)

    from framework.launch.data import build_source, total_steps
    from framework.methods.base_model import load_tokenizer

    num_samples = cfg.data.num_samples
    if num_samples is None and cfg.launch.max_steps is None:
        num_samples = len(build_source(cfg.data, load_tokenizer(cfg.model)))
    steps = total_steps(cfg.data, num_samples or 0, cfg.global_batch(), cfg.launch.max_steps)

    storage_path, storage_fs = _storage(cfg)
    spill_dir = str(Path.cwd() / "outputs" / "mlflow-backlog")
    payload = {
        "method": type(cfg).METHOD, "job": to_dict(cfg), "run_id": run_id, "tracking_uri": uri,
        "total_steps": steps, "num_samples": num_samples, "spill_dir": spill_dir,
        "resume": dataclasses.asdict(plan),
    }
    try:
        result = _fit(cfg, payload, run_id, storage_path, storage_fs)
    except Preempted:
        _set_status(client, run_id, "KILLED")  # --resume auto continues it
        raise
    except BaseException:
        _set_status(client, run_id, "FAILED")
        raise
    registered = None
    if cfg.tracking.register and result.checkpoint is not None:
        try:
            registered = _register(cfg, result.checkpoint, run_id, uri)
        except BaseException as err:
            _set_status(client, run_id, "FAILED")  # never left RUNNING
            if isinstance(err, Exception) and not isinstance(err, LaunchError):
                raise LaunchError(
                    f"training finished but registering the model failed: {type(err).__name__}: "
                    f"{redact_text(_short(err))}. The MLflow run {run_id} is marked FAILED. Fix: the cause above, "
                    f"then rerun with --resume runs:/{run_id} (the final checkpoint is kept)") from err
            raise
    _set_status(client, run_id, "FINISHED")
    return JobResult(run_id=run_id, tracking_uri=uri, steps=steps,
                     registered_uri=registered.uri if registered else None,
                     registered_version=registered.version if registered else None,
                     checkpoint_path=result.checkpoint.path if result.checkpoint else None)


def _fit(cfg: TrainJob, payload: dict, run_id: str, storage_path: str, storage_fs):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from framework.launch.preemption import DriverSignals
    from framework.launch.train_loop import train_loop_per_worker

    connect_ray()
    signals = DriverSignals()
    payload = {**payload, "stop_request": signals.actor}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=cfg.launch.num_workers, use_gpu=cfg.launch.use_gpu,
                                     resources_per_worker={"CPU": cfg.launch.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.launch.use_gpu else {})}),
        run_config=RunConfig(
            name=f"{cfg.launch.run_name}-{run_id}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.launch.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.launch.keep_checkpoints),
        ),
    )
    try:
        with signals:
            result = trainer.fit()
    except Exception as err:
        if signals.requested.is_set():
            raise Preempted(f"stopped by SIGTERM; training then ended with {type(err).__name__}: {_short(err)}. "
                            f"Fix: continue from the newest checkpoint with --resume runs:/{run_id}") from err
        raise LaunchError(
            f"training failed after {cfg.launch.max_failures} restart(s): {type(err).__name__}: {_short(err)}. "
            f"Fix: read the worker error above; the newest checkpoint is kept, so rerun with --resume runs:/{run_id}"
        ) from err
    metrics = result.metrics or {}
    if signals.requested.is_set() and not metrics.get("final"):
        raise Preempted(f"stopped by SIGTERM: the checkpoint of step {metrics.get('step')} is in MLflow run {run_id} "
                        f"(marked KILLED). Fix: continue it with --resume runs:/{run_id} (or --resume auto)")
    return result


def _register(cfg: TrainJob, checkpoint, run_id: str, uri: str):
    import mlflow

    from framework.launch.checkpointing import EXPORT_DIR
    from framework.tracking.registry import log_and_register

    name = cfg.tracking.model_name or cfg.launch.run_name
    mlflow.set_tracking_uri(uri)
    with checkpoint.as_directory() as local:
        model_dir = os.path.join(local, EXPORT_DIR)
        if not os.path.isdir(model_dir):
            raise LaunchError(f"the final checkpoint {checkpoint.path} holds no exported model. "
                              "Fix: this is a bug in longctx; the training state is intact, rerun with --resume")
        chat = getattr(cfg.data, "kind", None) == "chat"  # served prompts then go through the chat template
        return log_and_register(model_dir, registered_model_name=name, alias=cfg.tracking.alias, run_id=run_id,
                                chat=chat)


def _set_status(client, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status=status)
    except Exception as err:  # noqa: BLE001 - never hide the real outcome behind a tracking hiccup
        print(f"[longctx] warning: could not mark MLflow run {run_id} {status}: {_short(err)}", file=sys.stderr)


def _short(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:300]


__all__ = ["JobResult", "LaunchError", "TrackingError", "run_job", "validate"]
