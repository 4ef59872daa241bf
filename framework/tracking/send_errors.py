"""Which failed MLflow calls are worth retrying.

Transient (retried with back-off): no connection, a timeout, HTTP 5xx, 408, 409, 429, 499. Permanent
(any other 4xx, e.g. MLflow's INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, PERMISSION_DENIED,
UNAUTHENTICATED): the same call fails the same way every time, so the sender stops on it and the
message names the cause and the fix.
"""

from __future__ import annotations

RETRYABLE_4XX = frozenset({408, 409, 429, 499})  # timeout, conflict/aborted, rate limit, cancelled

_FIXES = {
    400: "the store rejected the request. If the run was deleted, restore it (mlflow runs restore --run-id "
         "{run_id}) and rerun with --resume runs:/{run_id}; else check the logged names and values",
    401: "set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN (missing or expired "
         "credentials), then rerun with --resume runs:/{run_id}",
    403: "give this identity write access to the run's experiment, or point --tracking-uri at a store it may "
         "write to, then rerun with --resume runs:/{run_id}",
    404: "the run {run_id} or its experiment is gone from this store (purged?). Check --tracking-uri; start a new "
         "run (the checkpoints are still in Ray's storage)",
}


def http_status(err: BaseException) -> int | None:
    """The HTTP status a failed call stands for: MlflowException's (from its error code), or a
    requests.HTTPError's (artifact uploads); None for anything else (no connection, a timeout)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code()
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def permanent_status(err: BaseException) -> int | None:
    """The 4xx status of a permanent failure, else None (retry it)."""
    status = http_status(err)
    if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
        return status
    return None


def permanent_message(describe: str, err: BaseException, status: int, run_id: str, backlog: str) -> str:
    fix = _FIXES.get(status, "check the tracking server's logs for the request; retrying cannot help")
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return (f"MLflow refused to {describe} (HTTP {status}, {type(err).__name__}: {reason}); this is not a "
            f"transient error, so longctx stops sending to the run and stops training. Unsent metrics are "
            f"written to {backlog}; checkpoints stay in Ray's storage. Fix: {fix.format(run_id=run_id)}")
