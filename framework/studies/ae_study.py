"""The "Data Distribution Matters" autoencoder study as a run of several jobs (recipes/ae_study.py
composes its config and presets): pretrain an LM per corpus, train an autoencoder per (encoder LM,
decoder LM) pair, then analyse every autoencoder on held-out texts of every corpus.

    from framework.studies.ae_study import AEStudyConfig, run_study
    result = run_study(cfg, resume=None)     # the parent MLflow run; the first aligned autoencoder's model

Stages (framework.launch.stages, one parent MLflow run): ``lm-<corpus>`` (method causal_lm),
``ae-<encoder corpus>-<decoder corpus>`` (method autoencoder); then the analysis on the driver
(framework.eval.autoencoder_eval, framework.studies.ae_study_report), logged to the parent run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from framework.config import ConfigError
from framework.job import BaseModelConfig, DataConfig, LaunchConfig, OptimConfig, TrackingConfig
from framework.methods.autoencoder import AutoencoderJob, AutoencoderSettings
from framework.methods.causal_lm import CausalLMJob
from framework.tracking.redact import redact

STUDY_KINDS = ("text", "entropy_text")
AE_DATA = ("decoder", "encoder")


@dataclass
class StudySettings:
    """corpora: {name: data options with a 'kind'} (kinds text or entropy_text); every LM pretrains on
    one, every (encoder, decoder) pair of them is an autoencoder. seq_len: tokens per text. lm_steps /
    ae_steps: optimizer steps of each LM / autoencoder (--max-steps caps both). lm_batch_size /
    ae_batch_size: texts per worker per step. ae_data: whose corpus an autoencoder trains on
    (decoder | encoder)."""

    corpora: dict = field(default_factory=lambda: {
        "austen": {"kind": "text"},
        "markov": {"kind": "entropy_text", "temperature": [0.3, 3.0]},
    })
    seq_len: int = 32
    lm_steps: int = 150
    lm_batch_size: int = 16
    ae_steps: int = 200
    ae_batch_size: int = 16
    ae_data: str = "decoder"

    def __post_init__(self) -> None:
        if self.ae_data not in AE_DATA:
            raise ConfigError(f"study.ae_data={self.ae_data!r} is not one of {AE_DATA}. Fix: --study.ae_data decoder")
        if not isinstance(self.corpora, dict) or len(self.corpora) < 2:
            raise ConfigError(f"study.corpora={self.corpora!r}: the study compares LMs pretrained on different "
                              "corpora, so it needs at least two. Fix: e.g. --study.corpora "
                              "'{\"austen\": {\"kind\": \"text\"}, \"markov\": {\"kind\": \"entropy_text\"}}'")
        for name, options in self.corpora.items():
            if not isinstance(options, dict) or options.get("kind") not in STUDY_KINDS:
                raise ConfigError(f"study.corpora.{name}={options!r} needs a 'kind' of {STUDY_KINDS}. "
                                  "Fix: e.g. {\"kind\": \"entropy_text\", \"temperature\": [0.3, 3.0]}")
            if not name.replace("_", "").isalnum():
                raise ConfigError(f"study.corpora: the name {name!r} must be letters, digits and '_' "
                                  "(it names stages and registered models). Fix: e.g. 'austen'")
        for name in ("seq_len", "lm_steps", "lm_batch_size", "ae_steps", "ae_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"study.{name}={getattr(self, name)} must be >= 1")


@dataclass
class AEStudyConfig:
    """The study: the LMs' base (`model`), the study's corpora and sizes, one optimiser per kind of stage,
    the autoencoders' slots and evaluation sizes (`autoencoder`; encoder and decoder are set per pair),
    and the launch and tracking sections every stage shares (run and model names get the stage's suffix)."""

    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    study: StudySettings = field(default_factory=StudySettings)
    lm_optim: OptimConfig = field(default_factory=OptimConfig)
    ae_optim: OptimConfig = field(default_factory=OptimConfig)
    autoencoder: AutoencoderSettings = field(default_factory=AutoencoderSettings)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    RENAMED_FIELDS: ClassVar[dict] = {"lm_method": "lm_optim", "ae_method": "ae_optim"}  # old configs' names


AEStudyConfig.METHOD = "autoencoder"  # the model the recipe reports is an autoencoder (recipe_cli's load hint)


# ---------------------------------------------------------------------------------------------- the stages' jobs
def _steps(cfg: AEStudyConfig, steps: int) -> int:
    return min(steps, cfg.launch.max_steps) if cfg.launch.max_steps else steps


def _data(cfg: AEStudyConfig, corpus: str, batch_size: int) -> DataConfig:
    options = dict(cfg.study.corpora[corpus])
    return DataConfig(kind=options.pop("kind"), seq_len=cfg.study.seq_len, batch_size=batch_size, epochs=1,
                      seed=cfg.launch.seed, options=options)


def _named(cfg: AEStudyConfig, stage: str, steps: int) -> dict:
    launch = dataclasses.replace(cfg.launch, run_name=f"{cfg.launch.run_name}-{stage}", max_steps=_steps(cfg, steps),
                                 checkpoint_every_n_steps=min(cfg.launch.checkpoint_every_n_steps, _steps(cfg, steps)))
    base_name = cfg.tracking.model_name or cfg.launch.run_name
    tracking = dataclasses.replace(cfg.tracking, model_name=f"{base_name}-{stage}", register=True)
    return {"launch": launch, "tracking": tracking}


def lm_job(cfg: AEStudyConfig, corpus: str) -> CausalLMJob:
    """Pretrain a random LM (cfg.model) on one corpus."""
    return CausalLMJob(model=cfg.model, optim=cfg.lm_optim, data=_data(cfg, corpus, cfg.study.lm_batch_size),
                       **_named(cfg, f"lm-{corpus}", cfg.study.lm_steps))


def ae_job(cfg: AEStudyConfig, encoder: str, decoder: str, lm_uris: dict) -> AutoencoderJob:
    """The autoencoder of an (encoder corpus, decoder corpus) pair: encoder from that LM's registered weights,
    the other LM frozen as the decoder, trained on study.ae_data's corpus."""
    settings = dataclasses.replace(cfg.autoencoder, encoder=lm_uris[encoder], decoder=lm_uris[decoder])
    corpus = decoder if cfg.study.ae_data == "decoder" else encoder
    return AutoencoderJob(model=cfg.model, optim=cfg.ae_optim, autoencoder=settings,
                          data=_data(cfg, corpus, cfg.study.ae_batch_size),
                          **_named(cfg, f"ae-{encoder}-{decoder}", cfg.study.ae_steps))


def heldout_spec(cfg: AEStudyConfig, corpus: str) -> dict:
    """Texts no stage trained on: the text kind's validation split, or other seeds of the same chain."""
    options = dict(cfg.study.corpora[corpus])
    spec = {**options, "seq_len": cfg.study.seq_len, "num_samples": cfg.autoencoder.eval_samples}
    if options["kind"] == "text":
        spec["split"] = "validation"
    else:
        spec["seed"] = int(options.get("seed", cfg.launch.seed)) + 1_000_003
    return spec


# ---------------------------------------------------------------------------------------------- the study
def run_study(cfg: AEStudyConfig, resume: str | None = None):
    from framework.launch.run import flat_params
    from framework.launch.stages import Stages

    corpora = list(cfg.study.corpora)
    stages = Stages.open(cfg.tracking, run_name=cfg.launch.run_name, resume=resume, params=flat_params(cfg))
    try:
        lms = {c: stages.job(f"lm-{c}", lm_job(cfg, c)) for c in corpora}
        lm_uris = {c: _registered(r, f"lm-{c}") for c, r in lms.items()}
        pairs = [(e, d) for e in corpora for d in corpora]
        aes = {(e, d): stages.job(f"ae-{e}-{d}", ae_job(cfg, e, d, lm_uris)) for e, d in pairs}
        summary = analyse(cfg, stages, lm_uris, {p: _registered(r, f"ae-{p[0]}-{p[1]}") for p, r in aes.items()},
                          {p: r.run_id for p, r in aes.items()})
    except BaseException:
        stages.fail()
        raise
    from framework.eval.reporting import print_summary

    print_summary(summary)
    first_aligned = next(p for p in pairs if p[0] == p[1])
    return stages.finish(aes[first_aligned])


def _registered(result, stage: str) -> str:
    if not result.pinned_model_uri:
        raise ConfigError(f"stage {stage} registered no model, so the study cannot pair it. "
                          "Fix: leave tracking.register on")
    return result.pinned_model_uri


def analyse(cfg: AEStudyConfig, stages, lm_uris: dict, ae_uris: dict, ae_runs: dict) -> dict:
    """Every autoencoder on held-out texts of every corpus; correlations, plots and the table to the parent run."""
    import torch

    from data_pipelines import build_source
    from framework.eval.autoencoder_eval import evaluate
    from framework.eval.model_uri import resolve_model_dir
    from framework.eval.reporting import machine_info, progress
    from framework.studies.ae_study_report import (alignment_table, flat_metrics, pair_name, scatter_plot,
                                                   study_report)
    from framework.methods.base_model import load_tokenizer
    from framework.models.compression.autoencoder import ContextAutoencoder
    from framework.models.loading import load_causal_lm

    tokenizer = load_tokenizer(cfg.model)
    heldout = {c: build_source(heldout_spec(cfg, c), tokenizer) for c in cfg.study.corpora}
    texts = [(c, src[i]["input_ids"]) for c, src in heldout.items() for i in range(len(src))]
    uri = stages.tracking_uri
    encoders = {c: load_causal_lm(resolve_model_dir(u, uri)).eval() for c, u in lm_uris.items()}
    records, client = {}, stages.client
    for (enc, dec), model_uri in ae_uris.items():
        progress(f"ae_study: evaluating {enc} -> {dec} on {len(texts)} held-out texts")
        model = ContextAutoencoder.from_pretrained(resolve_model_dir(model_uri, uri)).eval()
        with torch.no_grad():
            report = evaluate(model, [t for _, t in texts], cfg.autoencoder.eval_batch_size, encoder_lm=encoders[enc])
        rows = [{**r, "corpus": texts[r["index"]][0]} for r in report["records"]]
        records[pair_name(enc, dec)] = rows
        for key in ("f1", "bleu", "rouge_l"):
            client.log_metric(ae_runs[(enc, dec)], f"val/{key}", report["means"][key])
    report = study_report(records)
    out = os.path.join("outputs", "ae_study", stages.run_id)
    os.makedirs(out, exist_ok=True)
    plots = [scatter_plot(records, side, os.path.join(out, f"scatter_{side}.png"), report["correlations"])
             for side in ("encoder", "decoder")]
    table = alignment_table(report)
    with open(os.path.join(out, "alignment.md"), "w") as fh:
        fh.write(table + "\n")
    summary = {"command": "python recipes/ae_study.py " + " ".join(sys.argv[1:]), "machine": machine_info(),
               "parent_run_id": stages.run_id, "tracking_uri": uri, "models": {**lm_uris, **{
                   pair_name(*p): u for p, u in ae_uris.items()}},
               "settings": {"seq_len": cfg.study.seq_len, "slots": cfg.autoencoder.slots,
                            "slot_mode": cfg.autoencoder.slot_mode, "ae_data": cfg.study.ae_data,
                            "heldout_per_corpus": cfg.autoencoder.eval_samples, "corpora": cfg.study.corpora,
                            "lm_steps": _steps(cfg, cfg.study.lm_steps), "ae_steps": _steps(cfg, cfg.study.ae_steps)},
               "correlations": report["correlations"], "alignment": report["alignment"],
               "pairs": {p: {k: v[k] for k in ("aligned", "means", "by_corpus")} for p, v in report["pairs"].items()},
               "lm_entropy": _lm_entropy(records)}
    summary = redact(summary)  # logged and printed: no credential of the command line or the tracking URI
    with open(os.path.join(out, "ae_study.json"), "w") as fh:
        json.dump({**summary, "records": records}, fh, indent=2, sort_keys=True)
    stages.log_metrics(flat_metrics(report))
    for path in plots + [os.path.join(out, "alignment.md"), os.path.join(out, "ae_study.json")]:
        stages.log_artifact(path, "ae_study")
    return summary


def _lm_entropy(records: dict) -> dict:
    """The mean entropy each LM measures on each held-out corpus (as a decoder: the same for every encoder)."""
    from framework.studies.ae_study_report import ARROW

    out = {}
    for pair, rows in records.items():
        decoder = pair.split(ARROW)[1]
        for corpus in sorted({r["corpus"] for r in rows}):
            values = [r["decoder_entropy"] for r in rows if r["corpus"] == corpus]
            out.setdefault(decoder, {})[corpus] = sum(values) / len(values)
    return out
