"""Decoding's in-place buffers (K/V, text K/V, per-key meta) and its mask-free attention give the training forward."""

import torch
from conftest import VOCAB, tiny_comet
from transformers import MistralConfig, MistralForCausalLM

from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
from framework.models.comet.attention import ChunkKV


def token_by_token(model, ids, first: int = 3):
    stream = model.stream()
    with torch.no_grad():
        pieces = [stream.feed(ids[:, :first], logits="all")]
        pieces += [stream.feed(ids[:, i:i + 1], logits="all") for i in range(first, ids.shape[1])]
    return torch.cat(pieces, 1), stream


def test_buffers_that_start_too_small_grow_and_give_the_same_logits():
    model = tiny_comet("qwen3")
    ids = torch.randint(0, VOCAB, (2, 45))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    original = type(model.stream())._chunk_rows
    try:
        type(model.stream())._chunk_rows = lambda self: 1  # every buffer doubles many times per chunk
        streamed, stream = token_by_token(model, ids)
    finally:
        type(model.stream())._chunk_rows = original
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=1e-5)
    cache = stream.open.caches[0]
    assert isinstance(cache, ChunkKV) and cache.keys.shape[-2] == stream.open.keys.valid.shape[1]
    assert cache.text_kv()[0].shape[-2] == stream.open.n_text == 45 - 32


def test_a_sliding_window_that_cuts_inside_a_chunk_still_masks_decoding():
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, sliding_window=6)
    cfg._attn_implementation = "sdpa"
    model = CoMeTForCausalLM.from_base(MistralForCausalLM(cfg).eval(), CoMeTConfig(
        chunk_size=16, global_mem_size=4, temp_stride=4, temp_budget=8)).eval()
    with torch.no_grad():
        for p in model.memory_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, VOCAB, (1, 40))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    streamed, _ = token_by_token(model, ids)
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=1e-5)
