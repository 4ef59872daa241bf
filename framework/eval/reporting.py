"""Where evaluation results go: a JSON summary on stdout and in --out, and MLflow when a run is active.

A run is active when the caller started one (``mlflow.start_run``, as the recipes do) or when
``MLFLOW_RUN_ID`` names one (``MLFLOW_RUN_ID=<id> longctx eval passkey ...``); then metrics,
the summary and the figures are logged to it. Otherwise nothing touches MLflow.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
from typing import Mapping, Sequence


def write_summary(summary: Mapping, out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
    return path


def print_summary(summary: Mapping) -> None:
    """The one JSON document on stdout (progress goes to stderr)."""
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    sys.stdout.flush()


def progress(message: str) -> None:
    sys.stderr.write(f"[longctx] {message}\n")
    sys.stderr.flush()


def machine_info(device: str = "cpu") -> dict:
    """What a measurement ran on, for the summary of a benchmark: cores, load, versions, date."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "device": device,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_1m_at_end": None if load is None else round(load, 2),
            "date": datetime.date.today().isoformat()}


def metric_key(*parts) -> str:
    """An MLflow-safe metric name: letters, digits and _-./ only."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", "/".join(str(p) for p in parts))


def log_to_active_run(metrics: Mapping[str, float], files: Sequence[str], artifact_dir: str) -> str | None:
    """Log to the active MLflow run, or to MLFLOW_RUN_ID's; returns the run id, or None when there is none."""
    import mlflow

    active = mlflow.active_run()
    run_id = active.info.run_id if active else os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    client = mlflow.MlflowClient()
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key=k, value=float(v), timestamp=now, step=0) for k, v in metrics.items()]
    for i in range(0, len(batch), 900):
        client.log_batch(run_id, metrics=batch[i:i + 900])
    for path in files:
        client.log_artifact(run_id, path, artifact_path=artifact_dir)
    return run_id
