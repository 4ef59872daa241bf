"""Decoding logits from the transposed output embedding equal the LM head's, and follow every weight change."""

from __future__ import annotations

import torch

from framework.models.comet.decode_head import few_row_logits


def test_few_rows_equal_the_head_and_many_rows_use_it():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    with torch.no_grad():
        for rows in (1, 4, 9):
            h = torch.randn(2, rows, 16)
            torch.testing.assert_close(few_row_logits(head, h, few=4), head(h), atol=1e-5, rtol=1e-5)


def test_the_copy_follows_in_place_updates_and_new_weights():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(1, 1, 16)
    with torch.no_grad():
        few_row_logits(head, h, few=4)
        head.weight.mul_(2.0)  # an optimizer step or load_state_dict writes in place
        torch.testing.assert_close(few_row_logits(head, h, few=4), head(h), atol=1e-5, rtol=1e-5)
        head.weight = torch.nn.Parameter(torch.randn(50, 16))
        torch.testing.assert_close(few_row_logits(head, h, few=4), head(h), atol=1e-5, rtol=1e-5)


def test_hooks_and_gradients_take_the_head_itself():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(1, 1, 16)
    out = few_row_logits(head, h, few=4)  # grad mode, a trainable weight: the module, so gradients flow
    out.sum().backward()
    assert head.weight.grad is not None
    head.register_forward_hook(lambda module, args, out: out + 100.0)
    with torch.no_grad():
        assert float((few_row_logits(head, h, few=4) - head(h)).abs().max()) == 0.0
