"""Streaming's last layer runs only the rows whose outputs are read (memory rows and the asked-for logits' rows),
and a stream that asks for fewer logits computes the same memory, caches and later logits as one that asks for all."""

import pytest
import torch
from conftest import VOCAB, sliding_window_comet, tiny_comet

from framework.models.comet import CoMeTForCausalLM


def spy_some_rows(monkeypatch) -> list:
    """Record the number of rows each `_some_rows` call computes."""
    calls, original = [], CoMeTForCausalLM._some_rows

    def spy(self, layer_idx, x, plan, cache, rows):
        calls.append((layer_idx, rows.numel(), plan.layout.n_rows))
        return original(self, layer_idx, x, plan, cache, rows)

    monkeypatch.setattr(CoMeTForCausalLM, "_some_rows", spy)
    return calls


def run(model, ids, prefill: int, logits):
    """Feed ids[:, :prefill] asking for `logits`, then the rest one token at a time; (prefill logits, the rest's
    logits, the stream)."""
    stream = model.stream()
    with torch.no_grad():
        first = stream.feed(ids[:, :prefill], logits=logits)
        rest = torch.cat([stream.feed(ids[:, i:i + 1], logits="all") for i in range(prefill, ids.shape[1])], 1)
    return first, rest, stream


def assert_same_memory(a, b):
    for ma, mb in zip(a.memory, b.memory):
        for x, y in ((ma.memory, mb.memory), (ma.state, mb.state), (ma.queue, mb.queue)):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("neutral_start", [True, False])
@pytest.mark.parametrize("logits", ["last", None])
def test_fewer_logits_give_the_same_stream(family, neutral_start, logits, monkeypatch):
    model = tiny_comet(family, neutral_start=neutral_start)
    ids = torch.randint(0, VOCAB, (2, 16 * 3 + 9))
    full_first, full_rest, full = run(model, ids, 16 * 3 + 5, "all")
    calls = spy_some_rows(monkeypatch)
    first, rest, stream = run(model, ids, 16 * 3 + 5, logits)
    # three whole chunks and the open chunk's first 5 tokens ran their last layer on a few rows only
    last = len(model.layers) - 1
    assert len(calls) >= 4 and all(layer == last and 2 * n <= total for layer, n, total in calls)
    if logits == "last":
        torch.testing.assert_close(first, full_first[:, -1:], atol=1e-5, rtol=1e-5)
    else:
        assert first is None
    torch.testing.assert_close(rest, full_rest, atol=1e-5, rtol=1e-5)  # the open chunk's cached K/V are the same
    assert_same_memory(stream, full)


def test_a_sliding_window_that_cuts_keeps_its_mask_on_the_rows_read(monkeypatch):
    model = sliding_window_comet()
    ids = torch.randint(0, VOCAB, (1, 16 * 2 + 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    calls = spy_some_rows(monkeypatch)
    first, rest, _ = run(model, ids, 16 * 2 + 10, "last")
    assert calls
    torch.testing.assert_close(first, expected[:, 16 * 2 + 9:16 * 2 + 10], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest, expected[:, 16 * 2 + 10:], atol=1e-5, rtol=1e-5)
