"""Tiny Hugging Face causal LMs of the four supported families, built offline from configs."""

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

VOCAB = 300
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 4096}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
}


def tiny_base(family: str, seed: int = 0, attn: str = "sdpa"):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = cfg_cls(**COMMON, **extra)
    cfg._attn_implementation = attn
    return model_cls(cfg).eval()


def sliding_window_comet(window: int = 6):
    """A tiny Mistral CoMeT whose sliding window (6 tokens) cuts inside its 16-token chunks."""
    torch.manual_seed(0)
    cfg = MistralConfig(**COMMON, sliding_window=window)
    cfg._attn_implementation = "sdpa"
    model = CoMeTForCausalLM.from_base(MistralForCausalLM(cfg).eval(), CoMeTConfig(
        chunk_size=16, global_mem_size=4, temp_stride=4, temp_budget=8)).eval()
    with torch.no_grad():
        for p in model.memory_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tiny_comet(family: str = "qwen3", seed: int = 0, **overrides):
    params = dict(chunk_size=16, global_mem_size=4, temp_stride=4, temp_budget=8)
    params.update(overrides)
    model = CoMeTForCausalLM.from_base(tiny_base(family, seed), CoMeTConfig(**params)).eval()
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # move the new weights off their init so tests see learned-like values
        for p in model.memory_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param
