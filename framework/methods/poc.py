"""PoC's context-aware performance predictor as a method (methods.md §3): a small LM trunk reads
``context ⊕ r_1 ⊕ [P] ⊕ r_2 ⊕ [P] ⊕ ...``; a linear + sigmoid head on every [P] predicts the
retention at that ratio, all candidate ratios in one forward pass; trained with MSE on cached
(context, ratio, retention) labels (data kind ``poc_labels``, framework.studies.poc_labelling).

    python recipes/poc_predictor.py --preset tiny          # labels, this predictor, the comparison

The saved model is self-contained (framework.models.compression.poc_pipeline): the predictor,
its tokenizer, the label grid and a copy of the compressor the labels were measured with, so
``longctx compress --model models:/... --floor 0.9 INPUT`` needs nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from framework.config import ConfigError
from framework.job import TrainJob
from framework.methods.lm_module import TokenLossModule
from framework.methods.mlflow_model import TOKENIZER, TRACKING_DIR, MLflowModel, poc_signature
from framework.methods.registry import MethodSpec
from framework.models.loading import is_poc_dir

EXAMPLE_INPUT = "{'context': ['pear: 41907. plum: 22815.'], 'question': ['What is the value of plum?']}"


@dataclass
class PoCSettings:
    """trunk_layers: the predictor's trunk is the base's embeddings + first k blocks + final norm.
    ratio_bins: equal bins over (0, 1] whose learned embeddings are the ratio tokens. pair_attention:
    isolated (each (r_j, [P]) pair sees the context and itself) or causal. compressor: the compressor
    the labels were measured with (models:/<name>/<version>, runs:/<id> or a directory); empty: the
    one the label cache's manifest names. It is copied into the saved predictor."""

    trunk_layers: int = 2
    ratio_bins: int = 100
    pair_attention: str = "isolated"
    compressor: str = ""

    def __post_init__(self) -> None:
        from framework.models.compression.poc_predictor import PAIR_ATTENTION

        if self.trunk_layers < 1:
            raise ConfigError(f"poc.trunk_layers={self.trunk_layers} must be >= 1. Fix: --poc.trunk_layers 2")
        if self.ratio_bins < 1:
            raise ConfigError(f"poc.ratio_bins={self.ratio_bins} must be >= 1. Fix: --poc.ratio_bins 100")
        if self.pair_attention not in PAIR_ATTENTION:
            raise ConfigError(f"poc.pair_attention={self.pair_attention!r} is not one of {PAIR_ATTENTION}. "
                              "Fix: --poc.pair_attention isolated")


@dataclass
class PoCJob(TrainJob):
    METHOD: ClassVar[str] = "poc"

    poc: PoCSettings = field(default_factory=PoCSettings)


class PoCModule(TokenLossModule):
    """MSE between predicted and measured retention over every (context, ratio) of the global batch."""

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.model(batch["input_ids"], batch["attention_mask"], batch["ratios"].double())
        target = batch["retention"].to(pred)
        return ((pred - target) ** 2).sum(), torch.tensor(target.numel(), device=pred.device)

    def added_parameters(self):
        return [self.model.ratio_embed.weight, self.model.slot_embed, *self.model.head.parameters()]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.log("train/ppe", self._last["loss"], on_step=True, on_epoch=False, rank_zero_only=True, batch_size=1)


def _label_manifest(cfg) -> dict:
    from data_pipelines.poc_label_cache import LabelCache

    path = cfg.data.options.get("path")
    return LabelCache(path, cfg.data.options.get("storage_options")).info


def build_model(cfg, tokenizer):
    from framework.methods.base_model import build_base_model
    from framework.models.compression.poc_predictor import PoCPredictor, PoCPredictorError

    base = build_base_model(cfg.model, vocab_size=len(tokenizer), seed=cfg.launch.seed)
    try:
        model = PoCPredictor.from_causal_lm(base, num_layers=cfg.poc.trunk_layers, ratio_bins=cfg.poc.ratio_bins,
                                            pair_attention=cfg.poc.pair_attention)
    except PoCPredictorError as err:
        raise ConfigError(str(err)) from None
    info = _label_manifest(cfg)
    model.poc_info = {"grid": info["ratios"], "compressor": cfg.poc.compressor or info["compressor"],
                      "labels_key": info["key"], "score": info.get("score"), "factors": info.get("factors"),
                      "tracking_uri": cfg.tracking.tracking_uri}
    return model


def load_model(directory: str):
    import json

    from framework.models.compression.poc_pipeline import COMPRESSOR_DIR, PIPELINE_CONFIG
    from framework.models.compression.poc_predictor import PoCPredictor

    model = PoCPredictor.from_pretrained(directory)
    config = os.path.join(directory, PIPELINE_CONFIG)
    if os.path.isfile(config):
        with open(config) as fh:
            model.poc_info = json.load(fh)
        if os.path.isdir(os.path.join(directory, COMPRESSOR_DIR)):
            model.poc_compressor_dir = os.path.join(directory, COMPRESSOR_DIR)
    return model


def _compressor_dir(model) -> str | None:
    """A local copy of the predictor's compressor (resolved once per process)."""
    if getattr(model, "poc_compressor_dir", None):
        return model.poc_compressor_dir
    info = getattr(model, "poc_info", None) or {}
    uri = info.get("compressor")
    if not uri:
        return None
    from framework.eval.model_uri import resolve_model_dir

    if uri.startswith("dir:"):
        uri = uri[len("dir:"):].rsplit("#", 1)[0]
    model.poc_compressor_dir = resolve_model_dir(uri, info.get("tracking_uri"))
    return model.poc_compressor_dir


def save_model(model, directory: str, tokenizer) -> None:
    from framework.models.compression.poc_pipeline import save_pipeline

    info = dict(getattr(model, "poc_info", None) or {})
    grid = info.pop("grid", None)
    if grid is None:
        raise ConfigError("the predictor knows no label grid (it was not built from a label cache). Fix: build it "
                          "with framework.methods.poc.build_model on a poc_labels data section")
    info.pop("tracking_uri", None)
    save_pipeline(model, directory, tokenizer, grid, _compressor_dir(model), info)


def validate(cfg) -> None:
    if cfg.data.kind != "poc_labels":
        raise ConfigError(f"data.kind={cfg.data.kind!r}: the poc method trains on cached retention labels. Fix: "
                          "--data.kind poc_labels --data.options '{\"path\": \"outputs/poc/labels\"}' (recipes/"
                          "poc_predictor.py generates them)")
    if not cfg.data.options.get("path"):
        raise ConfigError("data.options.path is empty: the poc method needs the label cache. Fix: --data.options "
                          "'{\"path\": \"outputs/poc/labels\"}'")
    layers = cfg.model.arch.get("num_hidden_layers") if cfg.model.base.startswith("random:") else None
    if layers is not None and cfg.poc.trunk_layers > layers:
        raise ConfigError(f"poc.trunk_layers={cfg.poc.trunk_layers} exceeds the base's {layers} layers. "
                          f"Fix: --poc.trunk_layers {layers}")


MLFLOW_MODEL = MLflowModel(
    name="poc-predictor", pyfunc=TRACKING_DIR / "poc_pyfunc_model.py", signature=poc_signature,
    input_example=lambda n: ({"context": ["pear: 41907. plum: 22815."], "question": ["What is the value of plum?"]},
                             {"floor": 0.9, "max_new_tokens": min(n, 4)}),
    example_input=EXAMPLE_INPUT,
    required=("config.json", "poc_predictor.safetensors", "poc_pipeline.json", TOKENIZER,
              "compressor/compressor_config.json", "compressor/compressor.safetensors"),
    save_hint="Fix: write it with framework.models.compression.poc_pipeline.save_pipeline (the predictor, "
              "its tokenizer, the label grid and a copy of its compressor in compressor/)")

METHOD = MethodSpec(
    name="poc", job=PoCJob, build_model=build_model, load_model=load_model, save_model=save_model,
    validate=validate, recognizes=is_poc_dir, mlflow_model=MLFLOW_MODEL,
    lightning_module=lambda model, cfg, steps: PoCModule(model, cfg.optim, steps),
)
