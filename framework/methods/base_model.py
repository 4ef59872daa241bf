"""Loading the base model and tokenizer a job's `model` section names.

The section itself (BaseModelConfig, BaseModelError, tiny_qwen3) lives in `framework.job.model`.
"""

from __future__ import annotations

import os

from framework.job.model import RANDOM_FAMILIES, RANDOM_PREFIX, BaseModelConfig, BaseModelError
from framework.job.model import tiny_qwen3  # noqa: F401  (kept for old imports; its home is framework.job.model)


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
