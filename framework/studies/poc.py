"""The stages of recipes/poc_predictor.py: the compressor, the labels, the predictor and the comparison,
under one parent MLflow run (framework.launch.stages).

    result = run_pipeline(cfg, resume=None)     # what the recipe's main() runs instead of run_job

``PoCRecipe`` is the predictor's job (the poc method) plus the sections of the stages before it:
``labels`` (LabelSettings) and ``compressor`` (a COMI job, trained unless labels.compressor names
a registered compressor).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field

from framework.methods.comi import COMIJob
from framework.methods.poc import PoCJob

OUT = os.path.join("outputs", "poc")


@dataclass
class LabelSettings:
    """compressor: a registered RAM/COMI model to label with (models:/<name>/<version>, runs:/<id> or a
    directory); empty: train one in the compressor stage. data: the QA data spec of the contexts.
    factors: compression factors (context tokens per slot; PoC's r = 1/f). score: f1 | likelihood.
    path: the label cache (a folder or fsspec URL). shards: Ray tasks that measure it.
    validation_fraction: the held-out tail of the contexts (never trained on)."""

    compressor: str = ""
    data: dict = field(default_factory=lambda: {"kind": "qa_facts", "seq_len": 256, "min_seq_len": 64,
                                                "num_samples": 320, "seed": 777})
    factors: list = field(default_factory=lambda: [2, 4, 8, 16, 32])
    score: str = "f1"
    path: str = os.path.join(OUT, "labels")
    batch_size: int = 16
    max_new_tokens: int = 12
    shards: int = 2
    validation_fraction: float = 0.2


@dataclass
class PoCRecipe(PoCJob):
    """The predictor's job (the poc method) plus the stages before it."""

    labels: LabelSettings = field(default_factory=LabelSettings)
    compressor: COMIJob = field(default_factory=COMIJob)


def predictor_job(cfg: PoCRecipe, labels_path: str) -> PoCJob:
    """The poc method's own job: the recipe's shared sections, on the cache's train split."""
    names = [f.name for f in dataclasses.fields(PoCJob)]
    job = PoCJob(**{name: copy.deepcopy(getattr(cfg, name)) for name in names})
    job.data.options = {**job.data.options, "path": labels_path, "split": "train",
                        "validation_fraction": cfg.labels.validation_fraction}
    return job


def compressor_job(cfg: PoCRecipe) -> COMIJob:
    """The compressor stage: its own section, with the recipe's workers and a --max-steps cap."""
    job = copy.deepcopy(cfg.compressor)
    job.launch.num_workers, job.launch.use_gpu = cfg.launch.num_workers, cfg.launch.use_gpu
    if cfg.launch.max_steps is not None:
        job.launch.max_steps = min(job.launch.max_steps or cfg.launch.max_steps, cfg.launch.max_steps)
        job.launch.checkpoint_every_n_steps = min(job.launch.checkpoint_every_n_steps, job.launch.max_steps)
    return job


def run_pipeline(cfg: PoCRecipe, resume: str | None = None):
    from data_pipelines.errors import DataConfigError
    from framework.eval.model_uri import resolve_model_dir
    from framework.studies.poc_compare import compare, plot
    from framework.studies.poc_labelling import LabelError, LabelJob, generate_labels
    from framework.launch.run import flat_params
    from framework.launch.stages import Stages
    from framework.models.compression.poc_predictor import PoCPredictor
    from framework.tracking.redact import redact, redact_text

    stages = Stages.open(cfg.tracking, run_name=cfg.launch.run_name, resume=resume, params=flat_params(cfg))
    try:
        compressor = cfg.labels.compressor
        if not compressor:
            compressor = stages.job("compressor", compressor_job(cfg)).pinned_model_uri
        path = cfg.labels.path if "://" in cfg.labels.path else os.path.abspath(cfg.labels.path)
        label_job = LabelJob(compressor=compressor, data=dict(cfg.labels.data), path=path,
                             factors=list(cfg.labels.factors), score=cfg.labels.score,
                             batch_size=cfg.labels.batch_size, max_new_tokens=cfg.labels.max_new_tokens,
                             shards=cfg.labels.shards, tracking_uri=stages.tracking_uri)
        try:
            cache, reused = generate_labels(label_job)
        except (LabelError, DataConfigError) as err:
            from framework.config import ConfigError

            raise ConfigError(str(err)) from None
        stages.set_tag("longctx.poc.labels_path", redact_text(path))
        stages.set_tag("longctx.poc.labels_key", cache.key)
        stages.set_tag("longctx.poc.labels_reused", str(reused).lower())
        stages.set_tag("longctx.poc.compressor", label_job.compressor)
        job = predictor_job(cfg, path)
        job.poc.compressor = job.poc.compressor or label_job.compressor
        predictor = stages.job("predictor", job)

        directory = resolve_model_dir(predictor.pinned_model_uri, stages.tracking_uri)
        summary = compare(PoCPredictor.from_pretrained(directory), cache, cfg.labels.validation_fraction)
        summary.update({"compressor": label_job.compressor, "predictor": predictor.pinned_model_uri,
                        "labels": {"path": path, "key": cache.key, "reused": reused, "score": cfg.labels.score,
                                   "factors": list(cfg.labels.factors), "contexts": len(cache)}})
        summary = redact(summary)  # logged and printed: no credential of a labels path URI
        summary["labels"]["key"] = cache.key  # the labels' content hash, not a credential (redact hides any "key")
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "comparison.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
        plot(summary, os.path.join(OUT, "comparison.png"))
        metrics = {f"compare/ppe/{k}": v for k, v in summary["ppe"].items()}
        metrics.update({f"compare/p_at_r/{k}": v for k, v in summary["p_at_r"].items()})
        metrics.update({f"compare/ppe_train/{k}": v for k, v in summary["ppe_train"].items()})
        stages.log_metrics(metrics)
        stages.log_artifact(os.path.join(OUT, "comparison.json"), "poc")
        stages.log_artifact(os.path.join(OUT, "comparison.png"), "poc")
        print(json.dumps({k: summary[k] for k in ("ppe", "p_at_r", "target_met", "grid", "contexts", "labels",
                                                  "compressor", "predictor")}))
    except BaseException:
        stages.fail()
        raise
    return stages.finish(predictor)
