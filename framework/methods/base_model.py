"""Which Hugging Face causal LM and tokenizer a method starts from.

`base` is a local directory or a model id loaded with `from_pretrained`, or `random:<family>`
for a randomly initialised model built from `arch` (tiny runs and tests need no download).
`tokenizer` defaults to the base's own; `project` picks the tokenizer shipped with longctx.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

RANDOM_PREFIX = "random:"
RANDOM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "swat")  # swat: only the swat method builds it


class BaseModelError(ValueError):
    """The base model or tokenizer cannot be built; the message says why and how to fix it."""


@dataclass
class BaseModelConfig:
    base: str = "Qwen/Qwen3-4B"
    tokenizer: str | None = None
    arch: dict = field(default_factory=dict)
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.base.startswith(RANDOM_PREFIX):
            family = self.base[len(RANDOM_PREFIX):]
            if family not in RANDOM_FAMILIES:
                raise BaseModelError(f"model.base={self.base!r}: unknown family {family!r}. "
                                     f"Fix: use one of {[RANDOM_PREFIX + f for f in RANDOM_FAMILIES]}")
            if self.tokenizer is None:
                raise BaseModelError(f"model.base={self.base!r} has no tokenizer of its own. "
                                     "Fix: set model.tokenizer (e.g. 'project', or a tokenizer directory)")
        elif self.arch:
            raise BaseModelError(f"model.arch={self.arch!r} only applies to model.base='random:<family>'. "
                                 "Fix: drop model.arch (on the command line: --model.arch '{}' before --model.base), or use a random base")


def tiny_qwen3(hidden_size: int = 64) -> BaseModelConfig:
    """A random 2-layer Qwen3 (4 heads, 2 KV heads, MLP 2x hidden) on the project tokenizer: the tiny presets' base."""
    arch = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=4096)
    return BaseModelConfig(base=RANDOM_PREFIX + "qwen3", tokenizer="project", arch=arch)


def load_tokenizer(cfg: BaseModelConfig):
    from transformers import AutoTokenizer

    name = cfg.tokenizer or cfg.base
    if name == "project":
        from data_pipelines.tokenizer import load_project_tokenizer

        tok = load_project_tokenizer()
    else:
        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise BaseModelError(
                f"could not load the tokenizer {name!r}: {err}. Fix: set model.tokenizer to a local tokenizer "
                "directory, 'project', or a model id in the local Hugging Face cache") from err
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def build_base_model(cfg: BaseModelConfig, vocab_size: int, seed: int = 0):
    """The backbone: pretrained weights, or a random model of `family` sized by `arch`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not cfg.base.startswith(RANDOM_PREFIX):
        path = cfg.base
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise BaseModelError(f"model.base={path!r} is a directory without config.json. "
                                 "Fix: point at a directory written by save_pretrained")
        from framework.models.loading import is_comet_dir

        if is_comet_dir(path):
            raise BaseModelError(f"model.base={path!r} is a saved CoMeT model, not a base model. Fix: to continue "
                                 "training it use --resume (runs:/<id> or models:/<name>@<alias>); as a base, use "
                                 "the backbone it was built from")
        try:
            return AutoModelForCausalLM.from_pretrained(path, attn_implementation=cfg.attn_implementation)
        except OSError as err:
            raise BaseModelError(
                f"could not load model.base={path!r}: {err}. Fix: use a local directory, a model id in the local "
                "Hugging Face cache, or 'random:<family>' for a tiny random model") from err
    family = cfg.base[len(RANDOM_PREFIX):]
    if family == "swat":
        raise BaseModelError(f"model.base={cfg.base!r}: a SWAT model is built by the swat method "
                             "(recipes/swat_pretrain.py), not as another method's base. Fix: use a saved SWAT "
                             "directory, or one of " + str([RANDOM_PREFIX + f for f in RANDOM_FAMILIES[:-1]]))
    arch = {"vocab_size": vocab_size, **cfg.arch}
    try:
        hf_cfg = AutoConfig.for_model(family, **arch)
    except (TypeError, ValueError) as err:
        raise BaseModelError(f"model.arch={cfg.arch!r} is not a valid {family} config: {err}") from err
    hf_cfg._attn_implementation = cfg.attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(hf_cfg)
