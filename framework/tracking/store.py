"""Where runs are tracked: the embedded SQLite store by default, or a server; checked before training.

The job's `tracking` section (TrackingConfig, check_run_name) lives in `framework.job.tracking`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from framework.job.tracking import TrackingConfig, check_run_name  # noqa: F401  (the section's home)

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the cause and the fix."""


def resolve_tracking_uri(cfg: TrackingConfig, cwd: str | None = None) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str(Path(cwd or os.getcwd()).resolve() / DEFAULT_DB)


def default_artifact_location(uri: str) -> str | None:
    """For a local SQLite store keep artifacts beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None


def check_store(uri: str, timeout_s: float = 10.0) -> None:
    """Fail at once, with a fix, when the store cannot be reached or cannot hold a model registry."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise TrackingError(
            f"tracking URI {uri!r} is a file store: MLflow 3 rejects it and it has no model registry. "
            "Fix: use the embedded default (unset MLFLOW_TRACKING_URI), a database URI such as "
            "sqlite:///mlflow.db, or a server such as http://127.0.0.1:5000")
    if scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise TrackingError(f"tracking URI {uri!r}: directory {db.parent} does not exist or is not writable. "
                                "Fix: create it, or point --tracking-uri at a writable place")
        return
    if scheme in ("http", "https"):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as err:
            raise TrackingError(
                f"the MLflow tracking server {uri} is unreachable ({type(err).__name__}: {_first_line(err)}). "
                "Fix: start it (mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db), "
                "check the address and MLFLOW_TRACKING_URI, or drop --tracking-uri to use the embedded store"
            ) from None
        if response.status_code in (401, 403):
            raise TrackingError(f"the MLflow tracking server {uri} refused us (HTTP {response.status_code}). "
                                "Fix: set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
        if response.status_code >= 500:
            raise TrackingError(f"the MLflow tracking server {uri} is unhealthy (HTTP {response.status_code}). "
                                "Fix: check the server's logs")


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return text[:200]


def ensure_experiment(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted. Fix: restore it "
                                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or pass "
                                "--tracking.experiment with another name")
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def require_run(client, run_id: str, flag: str, uri: str, error: type[Exception] = TrackingError):
    """client.get_run(run_id), or `error` naming the flag, the URI and the fix when the store has no such run."""
    try:
        return client.get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MlflowException or a connection error
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise error(f"{flag} {uri}: no such MLflow run in this tracking store ({reason}). Fix: check the run id in "
                    "the MLflow UI, and that --tracking-uri points at the store the run was logged to") from None


def open_store_for_command(tracking_uri: str | None) -> str | None:
    """For a standalone command that logs one run (`longctx merge`, a recipe script): resolve and check the store,
    point MLflow's tracking and registry at it, and return the experiment to log in (MLFLOW_EXPERIMENT_ID, else
    the default experiment created if missing; None when MLFLOW_EXPERIMENT_NAME chooses it)."""
    import os

    import mlflow

    store = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri))
    check_store(store)
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not experiment_id and not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        experiment_id = ensure_experiment(mlflow.MlflowClient(), TrackingConfig().experiment,
                                          default_artifact_location(store))
    return experiment_id
