"""The `tracking` section: which MLflow store and registered model a job logs to, and the rule for run and
model names. Opening and checking the store is `framework.tracking.store`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from framework.config import ConfigError


@dataclass
class TrackingConfig:
    """tracking_uri: an MLflow server (http://127.0.0.1:5000) or a database URI. Empty: the
    MLFLOW_TRACKING_URI variable, else the embedded store `sqlite:///<cwd>/mlflow.db` with artifacts
    in `<cwd>/mlartifacts`. model_name: the registered model. alias: moved to every new version."""

    tracking_uri: str | None = None
    experiment: str = "longctx"
    model_name: str | None = None
    alias: str = "champion"
    register: bool = True
    log_checkpoints: bool = True
    flush_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.model_name is not None:
            check_run_name("tracking.model_name", self.model_name, "--model-name")


# a run or model name goes into MLflow search filters, registered-model URIs and Ray's storage paths
_NAME = re.compile(r"[\w][\w.\- ]*")


def check_run_name(field: str, value, flag: str) -> None:
    """Raise ConfigError unless `value` is a name of letters, digits, '_', '-', '.' and inner spaces."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value != value.strip():
        bad = sorted({c for c in str(value) if not (c.isalnum() or c in "_-. ")})
        why = f"it contains {' '.join(repr(c) for c in bad)}" if bad else "it is empty or starts with a space or sign"
        raise ConfigError(f"{field}={value!r} cannot be used as a name: {why}; names go into MLflow searches, "
                          f"model URIs and checkpoint paths. Fix: use letters, digits, '_', '-' and '.', "
                          f"e.g. {flag} my-run-1")
