"""The same weights, with every layer attending only to the last `window` tokens (softmax sliding-
window attention): the baseline that CoMeT and SWAT are compared against.

    sliding = sliding_window_model(model, window=4096)   # shares model's tensors, copies nothing

Mistral, Qwen2 and Qwen3 honour ``config.sliding_window`` in their attention and KV cache. A Llama
model has no sliding-window path in transformers, but its architecture is Mistral's (same modules,
same parameter names), so its weights are placed in a Mistral model. Llama variants with biases
(``attention_bias``/``mlp_bias``) are refused, since Mistral has none.
"""

from __future__ import annotations

import copy

SLIDING_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
_LLAMA_ONLY_KEYS = ("attention_bias", "mlp_bias", "pretraining_tp")


class SlidingWindowError(ValueError):
    """The model cannot be given sliding-window attention; the message says why and what to do."""


def sliding_config(config, window: int):
    """A copy of `config` whose every layer attends to `window` tokens (Llama becomes Mistral)."""
    family = getattr(config, "model_type", None)
    if family not in SLIDING_FAMILIES:
        raise SlidingWindowError(
            f"sliding-window attention needs a {'/'.join(SLIDING_FAMILIES)} model (their attention can honour "
            f"config.sliding_window); this one is {family!r}. Fix: use a model of those families, or full attention")
    if not isinstance(window, int) or window < 1:
        raise SlidingWindowError(f"window={window!r} must be a positive number of tokens, e.g. 4096")
    if family == "llama":
        config = _llama_as_mistral(config)
    else:
        config = copy.deepcopy(config)
    config.sliding_window = window
    if hasattr(config, "use_sliding_window"):
        config.use_sliding_window = True
    if hasattr(config, "max_window_layers"):
        config.max_window_layers = 0
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    return config


def _llama_as_mistral(config):
    from transformers import MistralConfig

    biased = [k for k in ("attention_bias", "mlp_bias") if getattr(config, k, False)]
    if biased:
        raise SlidingWindowError(f"this Llama model has {biased}; Mistral, whose attention gives Llama weights a "
                                 "sliding window, has no biases. Fix: use full attention for this model")
    values = {k: v for k, v in config.to_dict().items()
              if k not in _LLAMA_ONLY_KEYS + ("model_type", "architectures", "transformers_version")}
    mistral = MistralConfig(**values)
    mistral.architectures = ["MistralForCausalLM"]
    return mistral


def sliding_window_model(model, window: int):
    """`model`'s weights (shared, not copied) in a causal LM whose every layer attends to `window` tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = sliding_config(model.config, window)
    cfg._attn_implementation = getattr(model.config, "_attn_implementation", None) or "sdpa"
    with torch.device("meta"):
        sliding = AutoModelForCausalLM.from_config(cfg) if cfg.model_type != model.config.model_type \
            else type(model)(cfg)
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        owner, _, attr = name.rpartition(".")
        try:
            module = sliding.get_submodule(owner)
        except AttributeError:
            raise SlidingWindowError(f"the sliding-window {cfg.model_type} model has no {name!r}. "
                                     "Fix: use full attention for this model") from None
        if attr in module._parameters:
            module._parameters[attr] = tensor
        else:
            module._buffers[attr] = tensor
    leftover = [n for n, t in list(sliding.named_parameters()) + list(sliding.named_buffers()) if t.is_meta]
    if leftover:
        raise SlidingWindowError(f"could not share the weights with the sliding-window model ({leftover[:3]} unset). "
                                 "Fix: use full attention for this model")
    for layer in sliding.model.layers:
        seen = getattr(layer.self_attn, "sliding_window", window)
        if seen != window:
            raise SlidingWindowError(f"the {cfg.model_type} sliding-window model did not take window={window} "
                                     f"(a layer has {seen}). Fix: use full attention for this model")
    return sliding.train(model.training)
