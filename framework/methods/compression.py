"""What RAM and COMI share as methods: the trainable set, the LightningModule (answer loss, plus
RAM's contrastive loss), the per-batch ratio and the QA data check. `framework/methods/ram.py` and
`framework/methods/comi.py` add each method's own settings and defaults.

Trainable sets (methods.md §6): the encoder (``train_encoder``), the alignment module (always),
and the decoder per ``decoder``: ``attention`` (the projections named in ``decoder_targets``),
``lora`` (LoRA adapters on them, rank ``lora_rank``), ``full`` (every decoder weight: a random
tiny base has no language skill to keep) or ``frozen``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import torch

from data_pipelines.qa import QA_KINDS
from framework.config import ConfigError
from framework.methods.lm_module import TokenLossModule, global_token_mean
from framework.methods.mlflow_model import TOKENIZER, TRACKING_DIR, WEIGHTS, MLflowModel, qa_signature
from framework.methods.optim import lr_scheduler, param_groups
from framework.models.loading import is_compressor_dir

DECODER_MODES = ("attention", "lora", "full", "frozen")
EXAMPLE_INPUT = "{'context': ['pear: 41907. plum: 22815.'], 'question': ['What is the value of plum?']}"
MLFLOW_MODEL = MLflowModel(
    name="qa-compressor", pyfunc=TRACKING_DIR / "qa_pyfunc_model.py", signature=qa_signature,
    input_example=lambda n: ({"context": ["pear: 41907. plum: 22815."], "question": ["What is the value of plum?"]},
                             {"max_new_tokens": min(n, 4)}),
    example_input=EXAMPLE_INPUT, required=("config.json", "compressor.safetensors", WEIGHTS, TOKENIZER),
    save_hint="Fix: write it with CompressorForQA.save_pretrained(model_dir, tokenizer=tokenizer)")


@dataclass
class CompressionSettings:
    """The settings RAM and COMI share; see framework.models.compression.CompressorConfig for the
    model's own. train_encoder: fine-tune the encoder. decoder: attention | lora | full | frozen.
    decoder_targets: the decoder's projection names that `attention` trains (and LoRA wraps)."""

    encoder_layers: int = 8
    alignment: str = "linear"
    train_encoder: bool = True
    decoder: str = "attention"
    decoder_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    lora_rank: int = 128
    lora_alpha: float = 32.0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.decoder not in DECODER_MODES:
            raise ConfigError(f"compression.decoder={self.decoder!r} is not one of {DECODER_MODES}. "
                              "Fix: --compression.decoder attention")

    def model_config(self, method: str):
        from framework.models.compression.config import CompressorConfig, CompressorConfigError

        shared = {f.name for f in dataclasses.fields(CompressionSettings)}
        known = {f.name for f in dataclasses.fields(CompressorConfig)}
        own = {k: v for k, v in dataclasses.asdict(self).items() if k in known and k not in shared}
        try:
            return CompressorConfig(method=method, encoder_layers=self.encoder_layers, alignment=self.alignment,
                                    lora_rank=self.lora_rank if self.decoder == "lora" else 0,
                                    lora_alpha=self.lora_alpha, lora_targets=list(self.decoder_targets), **own)
        except CompressorConfigError as err:
            raise ConfigError(str(err)) from None


def set_trainable(model, settings: CompressionSettings) -> dict:
    """Freeze everything outside the method's trainable set; returns {group: [parameters]}."""
    from framework.models.compression.lora import LoRALinear

    for p in model.parameters():
        p.requires_grad_(False)
    groups = {"encoder": [], "alignment": list(model.align.parameters()), "decoder": []}
    if settings.train_encoder:
        groups["encoder"] = list(model.encoder.parameters())
    targets = set(settings.decoder_targets)
    if settings.decoder == "full":
        groups["decoder"] = [p for n, p in model.decoder.named_parameters() if "lora_" not in n]
    elif settings.decoder == "attention":
        groups["decoder"] = [p for name, m in model.decoder.named_modules()
                             if name.rsplit(".", 1)[-1] in targets and not isinstance(m, LoRALinear)
                             for p in m.parameters(recurse=False)]
    elif settings.decoder == "lora":
        groups["decoder"] = model.lora_parameters()
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    return groups


class CompressionQAModule(TokenLossModule):
    """Teacher-forced answer loss over [memory ; question ; answer] (the global token mean every
    method uses) plus the method's auxiliary loss (RAM's contrastive loss), on a ratio that may be
    drawn per batch (deterministic in the global step, so a resumed run draws the same)."""

    def __init__(self, model, optim, total_steps: int, settings: CompressionSettings, seed: int = 0):
        super().__init__(model, optim, total_steps)
        self.settings = settings
        self.seed = seed
        self.groups = set_trainable(model, settings)

    def batch_compression(self, step: int) -> dict:
        """The compression knobs of this step's batch: {} (the model's own), or ratio / keep_fraction."""
        return {}

    def _rng(self, step: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + step)

    def training_step(self, batch, batch_idx):
        knobs = self.batch_compression(self.global_step)
        out = self.model(**batch, **knobs)
        loss, mean, labelled, _ = global_token_mean(out.loss_sum, out.num_tokens, self.trainer.world_size,
                                                   batch["context_ids"].numel())
        # every trainable parameter stays in the graph (e.g. no segment skimmed): DDP needs a gradient for each
        touch = sum(p.sum() for p in self.groups["alignment"]) * 0.0
        comp = out.compressed
        self._last = {"loss": mean.item(), "tokens_in_batch": float(batch["context_ids"].numel()),
                      "labelled_tokens": labelled.item(), "aux": float(out.aux_loss.detach()),
                      "ratio": comp.ratio, "recall": comp.answer_segment_recall}
        return loss + out.aux_loss + touch

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        last = self._last
        extra = {"train/aux_loss": last["aux"], "train/compression_ratio": last["ratio"]}
        if last["recall"] is not None:
            extra["train/answer_segment_recall"] = last["recall"]
        self.log_dict(extra, on_step=True, on_epoch=False, rank_zero_only=True, batch_size=1)

    def configure_optimizers(self):
        return named_group_optimizers(self.groups, self.optim, self.total_steps)


def named_group_optimizers(groups: dict, cfg, total_steps) -> dict:
    """configure_optimizers' answer for {group: [parameters]}: AdamW over optim.param_groups(named=groups)
    (weight decay on matrices only) and the warmup + cosine schedule (optim.lr_scheduler), stepped per
    optimizer step. CompressionQAModule's, and that of any module that picks its own trainable groups."""
    opt = torch.optim.AdamW(param_groups(None, (), cfg, named=groups), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    sched = lr_scheduler(opt, cfg, total_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_model(cfg, tokenizer):
    from framework.methods.base_model import build_base_model
    from framework.models.compression.skeleton import CompressorError, CompressorForQA

    base = build_base_model(cfg.model, vocab_size=len(tokenizer), seed=cfg.launch.seed)
    try:
        model = CompressorForQA(base, cfg.compression.model_config(cfg.METHOD))
    except CompressorError as err:
        raise ConfigError(str(err)) from None
    if cfg.compression.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_model(directory: str):
    from framework.models.compression.skeleton import CompressorForQA

    return CompressorForQA.from_pretrained(directory)


def save_model(model, directory: str, tokenizer) -> None:
    model.save_pretrained(directory, tokenizer=tokenizer)


def validate(cfg) -> None:
    if cfg.data.kind not in QA_KINDS:
        raise ConfigError(f"data.kind={cfg.data.kind!r}: the {cfg.METHOD} method trains on question-answer samples. "
                          f"Fix: --data.kind qa_facts (synthetic facts), or --data.kind qa_jsonl with "
                          "--data.options '{\"path\": \"qa.jsonl\"}' ({input, prompt, answer} lines)")
    cfg.compression.model_config(cfg.METHOD)
    layers = cfg.model.arch.get("num_hidden_layers") if cfg.model.base.startswith("random:") else None
    if layers is not None and cfg.compression.encoder_layers > layers:
        raise ConfigError(f"compression.encoder_layers={cfg.compression.encoder_layers} exceeds the base's {layers} "
                          f"layers. Fix: --compression.encoder_layers {layers} or fewer")


def is_ram_dir(directory: str) -> bool:
    """A compressor directory whose config names RAM (every other compressor directory is COMI's)."""
    import json
    import os

    from framework.models.compression.skeleton import COMPRESSOR_CONFIG

    if not is_compressor_dir(directory):
        return False
    try:
        with open(os.path.join(directory, COMPRESSOR_CONFIG)) as fh:
            return json.load(fh).get("compressor_config", {}).get("method") == "ram"
    except (OSError, ValueError, AttributeError):
        return False
