"""Eval tests point MLflow at their own stores. MLflow keeps those settings process-wide (and in
os.environ, where later subprocesses inherit them), so each test puts them back afterwards."""

import os

import pytest

_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
               "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _restore_mlflow_globals():
    saved = {key: os.environ.get(key) for key in _MLFLOW_ENV}
    yield
    import mlflow
    from mlflow.tracking import fluent

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    fluent._active_experiment_id = None
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
