"""The run logger against a real SQLite store: permanent errors stop it at once, replayed steps are logged once."""

import json
import time

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INTERNAL_ERROR, INVALID_PARAMETER_VALUE, PERMISSION_DENIED,
                                          REQUEST_LIMIT_EXCEEDED, RESOURCE_DOES_NOT_EXIST,
                                          TEMPORARILY_UNAVAILABLE, UNAUTHENTICATED)

from framework.tracking.logger import MLflowRunLogger
from framework.tracking.send_errors import permanent_status
from framework.tracking.store import TrackingError

pytestmark = pytest.mark.timeout(120)


def _response(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    return response


@pytest.mark.parametrize("err, permanent", [
    (MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE), 400),
    (MlflowException("no run", error_code=RESOURCE_DOES_NOT_EXIST), 404),
    (MlflowException("no", error_code=PERMISSION_DENIED), 403),
    (MlflowException("who", error_code=UNAUTHENTICATED), 401),
    (requests.HTTPError("403 Forbidden", response=_response(403)), 403),
    (MlflowException("later", error_code=TEMPORARILY_UNAVAILABLE), None),
    (MlflowException("too many", error_code=REQUEST_LIMIT_EXCEEDED), None),
    (MlflowException("boom", error_code=INTERNAL_ERROR), None),
    (requests.HTTPError("429", response=_response(429)), None),
    (requests.HTTPError("408", response=_response(408)), None),
    (requests.HTTPError("502", response=_response(502)), None),
    (requests.ConnectionError("refused"), None),
])
def test_transient_and_permanent_errors_are_told_apart(err, permanent):
    assert permanent_status(err) == permanent


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    return client, exp


def _settle(logger, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline and logger.sender._pending and logger.sender.error is None:
        time.sleep(0.05)


def test_a_permanent_error_stops_at_once_keeps_the_metrics_and_names_the_fix(store, tmp_path):
    client, exp = store
    run_id = client.create_run(exp).info.run_id
    client.delete_run(run_id)  # every later log to it is refused with INVALID_PARAMETER_VALUE
    logger = MLflowRunLogger(client.tracking_uri, run_id, str(tmp_path / "spill"), flush_timeout_s=5)
    logger.log_metrics({"train/loss": 1.0}, step=1)
    _settle(logger)
    time.sleep(1.5)  # a retry would come after 1 s of back-off
    assert logger.sender.failures == 1, "a permanent error must not be retried"
    message = str(logger.sender.error)
    assert "HTTP 400" in message and "must be in the 'active' state" in message
    assert f"Fix: the store rejected the request. If the run was deleted, restore it (mlflow runs restore " \
           f"--run-id {run_id})" in message
    with pytest.raises(TrackingError, match="not a transient error, so longctx stops"):
        logger.log_metrics({"train/loss": 0.5}, step=2)  # the training job stops here
    logger.finalize("failed")
    lines = [json.loads(x) for x in (tmp_path / "spill" / f"unsent-mlflow-{run_id}.jsonl").read_text().splitlines()]
    assert [(x["step"], x["metrics"]) for x in lines] == [(1, {"train/loss": 1.0}), (2, {"train/loss": 0.5})]


def test_a_restarted_logger_logs_each_step_once(store, tmp_path):
    client, exp = store
    run_id = client.create_run(exp).info.run_id
    first = MLflowRunLogger(client.tracking_uri, run_id, str(tmp_path / "spill"), flush_timeout_s=30)
    for step in range(1, 10):  # killed after step 9; the newest checkpoint is at step 5
        first.log_metrics({"train/loss": 100.0 + step}, step=step)
    first.finalize("failed")

    second = MLflowRunLogger(client.tracking_uri, run_id, str(tmp_path / "spill"), flush_timeout_s=30)
    for step in range(6, 13):  # the restart replays steps 6..9
        second.log_metrics({"train/loss": 200.0 + step, "train/lr": 0.1}, step=step)
    second.finalize("success")

    loss = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in loss) == list(range(1, 13)), "one point per step"
    assert {m.step: m.value for m in loss}[9] == 109.0, "the first point of a step is kept"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/lr")) == list(range(6, 13))
    assert not (tmp_path / "spill").exists()
