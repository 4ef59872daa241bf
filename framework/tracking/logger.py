"""A Lightning logger for one MLflow run that never stalls or crashes training.

Every call to MLflow (metrics, checkpoint uploads) goes through `RetryingSender`, a background
thread that keeps the calls in order and retries a failing one with back-off. If the server drops
mid-run, training goes on; when it comes back, the backlog is sent. Whatever is still unsent when
the run ends is written to a JSON-lines file beside the run's outputs, and its path is printed.

A permanent error (a 4xx such as a deleted run or no permission; see `send_errors`) is not retried:
the sender stops and the next logging call raises `TrackingError` naming the cause and the fix.
Only the newest unsent checkpoint upload is kept: a newer one drops the older one and deletes its
local copy (Ray's storage still holds it). Each step's metrics are logged once: after a restart the
logger reads the highest step already in the run and skips replayed steps.
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

from framework.tracking.send_errors import permanent_message, permanent_status
from framework.tracking.store import TrackingError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Task:
    describe: str
    send: Callable[[], None]
    spill: dict | None = None        # what to write to the backlog file if it is never sent
    cleanup: Callable[[], None] | None = None   # after it was sent
    supersede: str | None = None     # a newer unsent task with the same key replaces this one
    drop: Callable[[], None] | None = None      # when it is replaced before it was sent
    cancelled: bool = False


class RetryingSender:
    """Runs MLflow calls in order on one daemon thread, retrying each transient failure with back-off.

    A permanent failure stops the thread; it is kept in `error` and raised by the next `submit`."""

    def __init__(self, spill_path: str, max_backoff_s: float = 30.0, run_id: str = ""):
        self.spill_path = spill_path
        self.max_backoff_s = max_backoff_s
        self.run_id = run_id
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._pending: list[_Task] = []
        self._current: _Task | None = None
        self._lock = threading.Lock()
        self.failures = 0
        self.error: TrackingError | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
        self._thread.start()

    def submit(self, task: _Task) -> None:
        """Queue `task`; raises `error` (the task is kept for the backlog file) once a permanent error stopped us."""
        dropped = []
        with self._lock:
            if task.supersede is not None:
                for old in self._pending:
                    if old.supersede == task.supersede:
                        old.cancelled = True  # the one being sent now is dropped by the thread at its next retry
                        if old is not self._current:
                            dropped.append(old)
                        else:
                            self._wake.set()  # cut its back-off short
                self._pending = [t for t in self._pending if t not in dropped]
            self._pending.append(task)
        for old in dropped:
            self._drop(old, task.describe)
        if self.error is not None:
            raise self.error
        self._queue.put(task)

    def _drop(self, old: _Task, newer: str) -> None:
        log.warning("MLflow: dropped the unsent %s: %s replaces it (only the newest pending one is kept)",
                    old.describe, newer)
        if old.drop:
            old.drop()

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            with self._lock:
                if task.cancelled:
                    continue  # replaced (and cleaned) while queued
                self._current = task
            backoff, sent = 1.0, False
            while not task.cancelled:
                try:
                    task.send()
                    sent = True
                    break
                except Exception as err:  # noqa: BLE001 - never raised into training from here
                    self.failures += 1
                    status = permanent_status(err)
                    if status is not None:
                        self.error = TrackingError(permanent_message(task.describe, err, status, self.run_id,
                                                                     self.spill_path))
                        log.error("%s", self.error)
                        return  # every later call would fail alike; close() writes the backlog
                    log.warning("MLflow: %s failed (%s: %s); retrying in %.0f s", task.describe,
                                type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "", backoff)
                    if self._stop_requested(backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff_s)
            with self._lock:
                self._current = None
                self._pending.remove(task)
            if sent and task.cleanup:
                task.cleanup()
            elif not sent:
                self._drop(task, "a newer one")

    def _stop_requested(self, wait_s: float) -> bool:
        """Wait out a back-off; woken early by close() or by a newer task replacing the current one."""
        self._wake.wait(wait_s)
        self._wake.clear()
        return self._stopping.is_set()

    def close(self, timeout_s: float) -> list[str]:
        """Wait up to `timeout_s` for the backlog; spill what is left. Returns what was not sent."""
        if self._closed:
            return []
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._stopping.set()
        self._wake.set()
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
        self.sender = RetryingSender(os.path.join(spill_dir, f"unsent-mlflow-{run_id}.jsonl"), run_id=run_id)
        # key -> highest step in the run; read (with retries) by the sender before it sends any metric
        self._logged_steps: dict[str, int] = {}
        self.sender.submit(_Task(describe=f"read the steps already logged to run {run_id}",
                                 send=self._read_logged_steps))

    def _read_logged_steps(self) -> None:
        """A restarted or resumed job replays the steps after its checkpoint: remember what the run holds.
        MLflow's latest value of a metric is the one with the highest step."""
        run = self._client.get_run(self._run_id)
        latest = getattr(run.data, "_metric_objs", None)
        if latest is None:  # an MLflow without it: the full history, once
            latest = [m for key in run.data.metrics for m in self._client.get_metric_history(self._run_id, key)]
        for metric in latest:
            self._logged_steps[metric.key] = max(metric.step, self._logged_steps.get(metric.key, metric.step))

    def _send_metrics(self, entities: list) -> None:
        """Log the points of steps the run does not hold yet (a replayed step is logged once)."""
        new = [m for m in entities if m.step > self._logged_steps.get(m.key, -1)]
        if new:
            self._client.log_batch(self._run_id, metrics=new)
        for m in new:
            self._logged_steps[m.key] = m.step

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
            send=lambda: self._send_metrics(entities),
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

        remove = (lambda: shutil.rmtree(local_dir, ignore_errors=True)) if delete_after else None
        self.sender.submit(_Task(
            describe=f"upload checkpoint {artifact_path}",
            send=send,
            cleanup=remove,
            supersede="checkpoint",  # only the newest unsent checkpoint is kept (Ray's storage has them all)
            drop=remove,
        ))

    def shorten_flush(self, timeout_s: float) -> None:
        """Wait at most `timeout_s` for the backlog at the end (a preempted job must exit soon)."""
        self._flush_timeout_s = min(self._flush_timeout_s, timeout_s)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.sender.close(self._flush_timeout_s)
