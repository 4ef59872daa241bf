"""The run logger keeps training going when the MLflow server drops, and loses nothing."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from mlflow import MlflowClient

from framework.tracking.logger import MLflowRunLogger
from framework.tracking.store import TrackingError, check_store

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root, port):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self):
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(self.uri + "/health", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(30)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    srv = Server(tmp_path, _free_port())
    srv.start()
    yield srv
    srv.stop()


def _wait_sent(logger, timeout=30):
    deadline = time.time() + timeout
    while logger.sender._pending and time.time() < deadline:
        time.sleep(0.1)
    assert not logger.sender._pending


def test_server_drop_mid_run_then_return_loses_no_metric_or_checkpoint(server, tmp_path):
    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment("drop")).info.run_id
    logger = MLflowRunLogger(server.uri, run_id, str(tmp_path / "spill"), flush_timeout_s=120)
    for step in range(3):
        logger.log_metrics({"train/loss": 10.0 - step}, step=step)
    _wait_sent(logger)

    server.stop()
    started = time.time()
    for step in range(3, 6):
        logger.log_metrics({"train/loss": 10.0 - step}, step=step)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.ckpt").write_bytes(b"state")
    (ckpt / "manifest.json").write_text("{}")
    logger.log_checkpoint_dir(str(ckpt), "checkpoints/step_000000005")
    assert time.time() - started < 2, "logging must not block training while the server is down"
    time.sleep(3)
    assert logger.sender.failures >= 1 and logger.sender._pending

    server.start()
    logger.finalize("success")
    history = MlflowClient(server.uri).get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == list(range(6))
    names = {os.path.basename(a.path) for a in MlflowClient(server.uri).list_artifacts(run_id, "checkpoints/step_000000005")}
    assert names == {"checkpoint.ckpt", "manifest.json"}
    assert not ckpt.exists(), "the local copy is removed only after the upload"
    assert not (tmp_path / "spill").exists()


def _scratch_checkpoint(tmp_path, step):
    d = tmp_path / f"longctx-step_{step:09d}"
    d.mkdir()
    (d / "checkpoint.ckpt").write_bytes(b"state %d" % step)
    (d / "manifest.json").write_text("{}")
    return d


def test_only_the_newest_unsent_checkpoint_is_kept_while_the_server_is_down(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # a loaded machine; a stopped server refuses at once
    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment("keep")).info.run_id
    logger = MLflowRunLogger(server.uri, run_id, str(tmp_path / "spill"), flush_timeout_s=120)
    _wait_sent(logger)
    server.stop()
    old, older, newest = (_scratch_checkpoint(tmp_path, s) for s in (5, 10, 15))
    logger.log_checkpoint_dir(str(old), "checkpoints/step_000000005")
    deadline = time.time() + 20
    while logger.sender.failures < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert logger.sender.failures >= 1, "step 5 is being retried"
    logger.log_checkpoint_dir(str(older), "checkpoints/step_000000010")
    logger.log_checkpoint_dir(str(newest), "checkpoints/step_000000015")
    assert not older.exists(), "a queued upload that a newer checkpoint replaces is dropped with its local copy"
    deadline = time.time() + 20
    while old.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not old.exists(), "the upload being retried is dropped too"
    assert newest.exists() and len(logger.sender._pending) == 1

    server.start()
    logger.finalize("success")
    uploaded = {os.path.basename(a.path) for a in MlflowClient(server.uri).list_artifacts(run_id, "checkpoints")}
    assert uploaded == {"step_000000015"}
    names = {os.path.basename(a.path) for a in client.list_artifacts(run_id, "checkpoints/step_000000015")}
    assert names == {"checkpoint.ckpt", "manifest.json"}
    assert not newest.exists(), "the scratch copy is removed after its upload"


def test_metrics_that_never_reach_the_server_are_kept_on_disk(server, tmp_path):
    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment("gone")).info.run_id
    logger = MLflowRunLogger(server.uri, run_id, str(tmp_path / "spill"), flush_timeout_s=3)
    server.stop()
    for step in range(4):
        logger.log_metrics({"train/loss": float(step)}, step=step)
    logger.finalize("success")
    lines = [json.loads(x) for x in (tmp_path / "spill" / f"unsent-mlflow-{run_id}.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2, 3]
    assert lines[2]["metrics"] == {"train/loss": 2.0} and lines[0]["run_id"] == run_id


def test_unreachable_server_at_start_is_a_clear_error():
    port = _free_port()
    with pytest.raises(TrackingError, match=r"unreachable .*Fix: start it"):
        check_store(f"http://127.0.0.1:{port}", timeout_s=2)


def test_file_store_is_refused_with_a_fix(tmp_path):
    with pytest.raises(TrackingError, match="file store"):
        check_store(f"file://{tmp_path}/mlruns")
