"""SWAT (sliding window attention training) as a method: pretrain a SWAT model from scratch on
sequences several times longer than its window, so that information must travel through the layers
(methods.md §5; the paper's best is a training length of about 4 x the window).

    python recipes/swat_pretrain.py --preset tiny --swat.window 32 --data.seq_len 128
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from framework.config import ConfigError
from framework.job import TrainJob
from framework.methods.causal_lm import CausalLMModule, load_model, save_hf_model
from framework.methods.mlflow_model import CAUSAL_LM
from framework.methods.registry import MethodSpec
from framework.models.loading import is_swat_dir

SCRATCH = "random:swat"


@dataclass
class SWATArch:
    """The SWAT model's shape and attention (framework.models.swat.SWATConfig), used when model.base is
    'random:swat'. window: tokens each layer attends to. normalization: sigmoid (SWAT) or softmax (the
    ablation). slopes: balanced, negative, positive or none (the per-head linear position bias). rope:
    rotary embeddings on q and k. block_size: query block of the banded computation (None: the window)."""

    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    window: int = 128
    normalization: str = "sigmoid"
    slopes: str = "balanced"
    rope: bool = True
    rope_theta: float = 10000.0
    block_size: int | None = None
    tie_word_embeddings: bool = False
    gradient_checkpointing: bool = False

    def model_config(self, vocab_size: int, tokenizer=None):
        from framework.models.swat import SWATConfig

        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "gradient_checkpointing"}
        special = {}
        if tokenizer is not None:
            special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                       "pad_token_id": tokenizer.pad_token_id}
        return SWATConfig(vocab_size=vocab_size, **fields, **special)


@dataclass
class SWATJob(TrainJob):
    """SWAT's job: the shared sections plus `swat`, the model's shape and attention."""

    METHOD: ClassVar[str] = "swat"

    swat: SWATArch = field(default_factory=SWATArch)


class SWATModule(CausalLMModule):
    """Next-token pretraining of a SWATForCausalLM (the global token-mean loss of every method)."""


def build_model(cfg: SWATJob, tokenizer):
    if cfg.model.base == SCRATCH:
        from framework.models.swat import SWATForCausalLM

        with torch.random.fork_rng():
            torch.manual_seed(cfg.launch.seed)
            model = SWATForCausalLM(cfg.swat.model_config(len(tokenizer), tokenizer))
    else:
        model = _load_base(cfg.model.base)
        if getattr(model.config, "model_type", None) != "swat":
            raise ConfigError(f"model.base={cfg.model.base!r} is a {model.config.model_type!r} model, not a SWAT one. "
                              f"Fix: model.base={SCRATCH!r} to pretrain from scratch, or a directory a SWAT run saved")
    if cfg.swat.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _load_base(path: str):
    import os

    from framework.job import BaseModelError
    from framework.models.loading import is_hf_dir, load_causal_lm

    if not is_hf_dir(path):
        raise BaseModelError(f"model.base={path!r} is not a saved model directory (config.json and model.safetensors). "
                             f"Fix: model.base={SCRATCH!r} to pretrain from scratch, or a directory a SWAT run saved"
                             + ("" if os.path.isdir(path) else " (no such directory)"))
    return load_causal_lm(path)


def validate(cfg: SWATJob) -> None:
    if cfg.model.base == SCRATCH and cfg.model.arch:
        raise ConfigError(f"model.arch={cfg.model.arch!r} does not shape a SWAT model. Fix: drop it and set "
                          "--swat.<field> (e.g. --swat.hidden_size 256); --help-config lists them")
    if cfg.model.base == SCRATCH:
        try:
            cfg.swat.model_config(vocab_size=2)
        except ValueError as err:
            raise ConfigError(f"swat: {err}") from None
    if cfg.data.seq_len <= cfg.swat.window:
        print(f"[longctx] note: data.seq_len={cfg.data.seq_len} <= swat.window={cfg.swat.window}: SWAT learns to "
              "carry information across windows only on longer sequences (the paper trains at about 4 x the window)")


METHOD = MethodSpec(
    name="swat", job=SWATJob, build_model=build_model, load_model=load_model, save_model=save_hf_model,
    lightning_module=lambda model, cfg, steps: SWATModule(model, cfg.optim, steps),
    validate=validate, recognizes=is_swat_dir, mlflow_model=CAUSAL_LM,
)
