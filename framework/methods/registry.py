"""Which method a job trains: its model, its LightningModule, and its own checks.

Every method module (``framework/methods/<name>.py``) defines one ``METHOD = MethodSpec(...)``.
The launch code reaches a method only through this table, so adding a method is adding a row:

    spec = method_for(cfg)               # cfg.METHOD -> the MethodSpec
    model = spec.build_model(cfg, tokenizer)
    module = spec.lightning_module(model, cfg, total_steps)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

METHODS = {
    "comet": "framework.methods.comet",
    "swat": "framework.methods.swat",
    "causal_lm": "framework.methods.causal_lm",
    "ram": "framework.methods.ram",
    "comi": "framework.methods.comi",
    "autoencoder": "framework.methods.autoencoder",
    "poc": "framework.methods.poc",
}


class UnknownMethodError(ValueError):
    """A job names a method that no module defines."""


@dataclass(frozen=True)
class MethodSpec:
    """name: the key of METHODS. job: the TrainJob subclass of this method's config.
    build_model(cfg, tokenizer) -> a fresh model (pretrained weights or random, per cfg.model).
    load_model(directory) -> the model that save_model wrote. save_model(model, directory, tokenizer)
    writes a from_pretrained directory (safetensors and tokenizer files). lightning_module(model, cfg,
    total_steps) -> the LightningModule. validate(cfg) raises ConfigError for settings that only this
    method rules out. pipeline: whether the layer-pipeline strategy can train it. example_input: Python
    source of an input the registered pyfunc takes, for the hint a recipe prints."""

    name: str
    job: type
    build_model: Callable
    load_model: Callable
    save_model: Callable
    lightning_module: Callable
    validate: Callable = lambda cfg: None
    pipeline: bool = False
    example_input: str = "['Hello']"


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; longctx has {sorted(METHODS)}. "
                                 "Fix: set METHOD on the job class to one of them")
    return importlib.import_module(METHODS[name]).METHOD


def method_for(cfg) -> MethodSpec:
    """The MethodSpec of a job config (its class's METHOD)."""
    return get_method(type(cfg).METHOD)
