"""The Hugging Face causal LM under CoMeT: loading it and reaching its parts."""

from __future__ import annotations

import os

import torch
from torch import nn

TESTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


class BackboneError(ValueError):
    """The base model cannot carry CoMeT; the message says why and what to do."""


def load_backbone(source, **load_kwargs):
    """A causal LM from a model instance, a local directory or a model id (via `from_pretrained`)."""
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise BackboneError(
            f"from_base got {type(source).__name__}; pass a transformers causal LM, a local directory, or a model id"
        )
    from transformers import AutoModelForCausalLM

    path = os.fspath(source)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise BackboneError(f"{path} is a directory without config.json; point at a saved Hugging Face model")
    try:
        return AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
    except OSError as err:
        raise BackboneError(
            f"could not load a causal LM from {path!r}: {err}. Fix: pass a local directory written by "
            "save_pretrained, or a model id that is in the local Hugging Face cache (this machine may be offline)"
        ) from err


def check_backbone(model) -> None:
    """Fail early, naming the missing piece, if `model` lacks the decoder structure CoMeT wraps."""
    needed = {
        "model.embed_tokens": lambda m: m.model.embed_tokens,
        "model.layers": lambda m: m.model.layers,
        "model.norm": lambda m: m.model.norm,
        "model.rotary_emb": lambda m: m.model.rotary_emb,
        "lm_head": lambda m: m.lm_head,
        "model.layers[0].self_attn.k_proj": lambda m: m.model.layers[0].self_attn.k_proj,
        "model.layers[0].self_attn.v_proj": lambda m: m.model.layers[0].self_attn.v_proj,
        "model.layers[0].input_layernorm": lambda m: m.model.layers[0].input_layernorm,
    }
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    for name, get in needed.items():
        try:
            get(model)
        except (AttributeError, IndexError, TypeError):
            raise BackboneError(
                f"the {kind!r} model has no `{name}`; CoMeT wraps decoder-only LMs laid out like "
                f"{', '.join(TESTED_FAMILIES)} (tested families)"
            ) from None


def use_maskable_attention(model) -> None:
    """CoMeT passes explicit per-chunk masks, which sdpa and eager attention honour."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in (None, "sdpa", "eager"):
        model.set_attn_implementation("sdpa")


def layer_window(model, layer) -> int | None:
    """The sliding-window size of one decoder layer, or None for full attention."""
    attn = layer.self_attn
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window
    return getattr(model.config, "sliding_window", None)


def embedding_stats(embed: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
    w = embed.weight.detach().float()
    return w.mean(dim=0), w.std(dim=0)
