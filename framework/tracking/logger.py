"""A Lightning logger for one MLflow run that never stalls or crashes training.

Every call to MLflow (metrics, checkpoint uploads) goes through `RetryingSender`, a background
thread that keeps the calls in order and retries a failing one with back-off. If the server drops
mid-run, training goes on; when it comes back, the backlog is sent. Whatever is still unsent when
the run ends is written to a JSON-lines file beside the run's outputs, and its path is printed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Callable

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


@dataclass
class _Task:
    describe: str
    send: Callable[[], None]
    spill: dict | None = None        # what to write to the backlog file if it is never sent
    cleanup: Callable[[], None] | None = None


class RetryingSender:
    """Runs MLflow calls in order on one daemon thread, retrying each until it succeeds."""

    def __init__(self, spill_path: str, max_backoff_s: float = 30.0):
        self.spill_path = spill_path
        self.max_backoff_s = max_backoff_s
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._pending: list[_Task] = []
        self._lock = threading.Lock()
        self.failures = 0
        self._stopping = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
        self._thread.start()

    def submit(self, task: _Task) -> None:
        with self._lock:
            self._pending.append(task)
        self._queue.put(task)

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            backoff = 1.0
            while True:
                try:
                    task.send()
                    break
                except Exception as err:  # noqa: BLE001 - any failure is retried, never raised into training
                    self.failures += 1
                    log.warning("MLflow: %s failed (%s: %s); retrying in %.0f s", task.describe,
                                type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "", backoff)
                    if self._stop_requested(backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff_s)
            with self._lock:
                self._pending.remove(task)
            if task.cleanup:
                task.cleanup()

    def _stop_requested(self, wait_s: float) -> bool:
        return self._stopping.wait(wait_s)

    def close(self, timeout_s: float) -> list[str]:
        """Wait up to `timeout_s` for the backlog; spill what is left. Returns what was not sent."""
        if self._closed:
            return []
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._stopping.set()
        self._thread.join(5)
        with self._lock:
            left = list(self._pending)
            self._pending.clear()
        if left:
            os.makedirs(os.path.dirname(self.spill_path) or ".", exist_ok=True)
            with open(self.spill_path, "a") as fh:
                for task in left:
                    if task.spill is not None:
                        fh.write(json.dumps(task.spill) + "\n")
            log.warning("MLflow: %d call(s) could not be sent; metrics kept in %s (checkpoints stay in Ray storage)",
                        len(left), self.spill_path)
        return [t.describe for t in left]


class MLflowRunLogger(Logger):
    """Logs metrics of rank 0 into an existing MLflow run (created by the launcher)."""

    def __init__(self, tracking_uri: str, run_id: str, spill_dir: str, flush_timeout_s: float = 300.0):
        super().__init__()
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri)
        self._run_id = run_id
        self._flush_timeout_s = flush_timeout_s
        self.sender = RetryingSender(os.path.join(spill_dir, f"unsent-mlflow-{run_id}.jsonl"))

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the launcher logs the job config once, as params, when it creates the run

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items() if k != "epoch"}
        entities = [Metric(key=k, value=v, timestamp=stamp, step=step or 0) for k, v in values.items()]
        if not entities:
            return
        self.sender.submit(_Task(
            describe=f"log {len(entities)} metric(s) at step {step}",
            send=lambda: self._client.log_batch(self._run_id, metrics=entities),
            spill={"run_id": self._run_id, "step": step, "timestamp": stamp, "metrics": values},
        ))

    @rank_zero_only
    def log_checkpoint_dir(self, local_dir: str, artifact_path: str, delete_after: bool = True,
                           exclude: tuple = ()) -> None:
        """Upload a checkpoint directory; its manifest goes last, so a listed manifest means complete."""
        from framework.tracking.checkpoints import MANIFEST

        def send() -> None:
            for entry in sorted(os.listdir(local_dir)):
                path = os.path.join(local_dir, entry)
                if entry == MANIFEST or entry in exclude:
                    continue
                if os.path.isdir(path):
                    self._client.log_artifacts(self._run_id, path, f"{artifact_path}/{entry}")
                else:
                    self._client.log_artifact(self._run_id, path, artifact_path)
            self._client.log_artifact(self._run_id, os.path.join(local_dir, MANIFEST), artifact_path)

        self.sender.submit(_Task(
            describe=f"upload checkpoint {artifact_path}",
            send=send,
            cleanup=(lambda: shutil.rmtree(local_dir, ignore_errors=True)) if delete_after else None,
        ))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.sender.close(self._flush_timeout_s)
