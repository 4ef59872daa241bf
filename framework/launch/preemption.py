"""Preemption: SIGTERM on the driver makes every worker checkpoint at the step it reached, then the driver exits.

Ray Train V2 runs the Lightning loop in a thread of each worker, so Lightning's own SIGTERM handler never
runs, and `ray job stop` or an orchestrator signals the driver (the recipe process), not the workers.

    driver                                     each worker (StepCheckpointReport)
    SIGTERM -> StopRequest.set() (an actor) -> a thread polls it every POLL_S; after each optimizer step
                                               the ranks agree (any rank saw it) and checkpoint that step,
    fit() returns, run marked KILLED     <-    report it to Ray and MLflow, flush, and stop training

A second SIGTERM terminates the driver at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

POLL_S = 0.5
FLUSH_TIMEOUT_S = 30.0  # the MLflow backlog a stopping worker waits for; the rest is spilled (Ray keeps the checkpoint)


class StopRequest:
    """The actor the driver sets on SIGTERM and the workers poll."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class DriverSignals:
    """On the driver, around trainer.fit(): SIGTERM sets the StopRequest actor (from a thread, not the handler)."""

    def __init__(self) -> None:
        import ray

        self.actor = ray.remote(num_cpus=0)(StopRequest).remote()
        self.requested = threading.Event()
        self._previous = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._forward, name="longctx-sigterm", daemon=True)

    def __enter__(self) -> "DriverSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handler(self, signum, frame) -> None:
        if self.requested.is_set():  # a second SIGTERM: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested.set()

    def _forward(self) -> None:
        while not self._closed.is_set():
            if self.requested.wait(POLL_S):
                print("[longctx] SIGTERM: the workers checkpoint the step they reached, then the job stops "
                      "(a second SIGTERM stops at once)", file=sys.stderr, flush=True)
                self.actor.set.remote()
                return


class WorkerStopPoll:
    """On a worker: a thread that polls the driver's StopRequest; `seen` once it is set."""

    def __init__(self, actor) -> None:
        self.actor = actor
        self.seen = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="longctx-stop-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import ray

        while not self.seen.is_set():
            try:
                if ray.get(self.actor.is_set.remote(), timeout=30):
                    self.seen.set()
                    return
            except Exception:  # noqa: BLE001 - the driver is gone or busy: the job ends without us
                pass
            self.seen.wait(POLL_S)
