"""Training-state checkpoints: a directory with `checkpoint.ckpt` and a `manifest.json`.

The manifest holds what a resume needs before it opens the weights: the optimizer step, the data
cursor (global samples consumed, independent of the worker count) and the MLflow run id. In an
MLflow run, checkpoints live under `checkpoints/step_<step>/`; the manifest is uploaded last, so
a checkpoint whose manifest is listed is complete.
"""

from __future__ import annotations

import json
import os
import re
import time

MANIFEST = "manifest.json"
STATE_FILE = "checkpoint.ckpt"
ARTIFACT_DIR = "checkpoints"
FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unusable; the message names it and the fix."""


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def write_manifest(directory: str, *, step: int, samples_consumed: int, global_batch: int, world_size: int,
                   mlflow_run_id: str | None, data_seed: int, exclude: tuple = (),
                   schedule: dict | None = None) -> dict:
    """schedule: the run's plan ({plan_steps, plan_batch}, framework.launch.data.AttemptPlan), which a
    resume on another global batch keeps."""
    manifest = {
        "format": FORMAT,
        "step": int(step),
        "data": {"samples_consumed": int(samples_consumed), "global_batch": int(global_batch), "seed": int(data_seed)},
        "world_size": int(world_size),
        "schedule": schedule,
        "mlflow_run_id": mlflow_run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": sorted(f for f in os.listdir(directory) if f != MANIFEST and f not in exclude),
    }
    with open(os.path.join(directory, MANIFEST), "w") as fh:
        json.dump(manifest, fh, indent=2)
    return manifest


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory} is not a longctx checkpoint: {MANIFEST} is missing. "
                              "Fix: resume from a directory written by a longctx run (checkpoints/step_*)")
    with open(path) as fh:
        manifest = json.load(fh)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {manifest.get('format')}; this longctx reads {FORMAT}")
    missing = [f for f in manifest.get("files", []) if not os.path.exists(os.path.join(directory, f))]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is incomplete: {missing} missing. "
                              "Fix: resume from an older checkpoint or the run's newest complete one")
    return manifest


def newest_run_checkpoint(client, run_id: str) -> str | None:
    """The artifact path of the newest complete checkpoint logged to `run_id`, or None."""
    best = None
    for info in client.list_artifacts(run_id, ARTIFACT_DIR):
        match = _STEP_DIR.match(os.path.basename(info.path))
        if not info.is_dir or not match:
            continue
        step = int(match.group(1))
        if best is not None and step <= best[0]:
            continue
        names = {os.path.basename(f.path) for f in client.list_artifacts(run_id, info.path)}
        if MANIFEST in names:
            best = (step, info.path)
    return best[1] if best else None


def download_run_checkpoint(tracking_uri: str, run_id: str, artifact_path: str, dst: str) -> str:
    import mlflow

    os.makedirs(dst, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst,
                                                tracking_uri=tracking_uri)
    read_manifest(local)
    return local
