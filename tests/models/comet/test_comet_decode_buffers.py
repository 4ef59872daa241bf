"""Decoding's in-place buffers (K/V, text K/V, per-key meta) and its mask-free attention give the training forward."""

import torch
from conftest import VOCAB, sliding_window_comet, tiny_comet

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
    model = sliding_window_comet()
    ids = torch.randint(0, VOCAB, (1, 40))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    streamed, _ = token_by_token(model, ids)
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=1e-5)
