"""The blockwise LM-head cross-entropy equals F.cross_entropy over the full logits, loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from framework.models import linear_cross_entropy as lce


def reference(hidden, head, targets):
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def grads(fn, hidden, head, targets):
    hidden = hidden.detach().clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    loss = fn(hidden, head, targets)
    loss.backward()
    out = [hidden.grad, head.weight.grad] + ([head.bias.grad] if head.bias is not None else [])
    return loss.detach(), out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("block_elements", [1 << 24, 300])  # one block, and many blocks of 3 rows
def test_loss_and_gradients_equal_full_logits(monkeypatch, bias, block_elements):
    monkeypatch.setattr(lce, "BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 100, bias=bias)
    hidden, targets = torch.randn(20, 32), torch.randint(0, 100, (20,))
    ours, ours_grads = grads(lce.linear_cross_entropy, hidden, head, targets)
    ref, ref_grads = grads(reference, hidden, head, targets)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-6)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bfloat16_head_is_close_to_fp32():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 64)
    hidden, targets = torch.randn(10, 32), torch.randint(0, 64, (10,))
    ref, ref_grads = grads(reference, hidden, head, targets)
    ours, ours_grads = grads(lce.linear_cross_entropy, hidden.bfloat16(), head.bfloat16(), targets)
    assert ours.dtype == torch.float32 and ours_grads[1].dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, atol=0.3, rtol=0.02)
    torch.testing.assert_close(ours_grads[0].float(), ref_grads[0], atol=0.05, rtol=0.05)


def test_no_rows_gives_zero_loss_and_zero_gradients():
    head = torch.nn.Linear(8, 16)
    loss, (dh, dw, db) = grads(lce.linear_cross_entropy, torch.randn(0, 8), head, torch.zeros(0, dtype=torch.long))
    assert float(loss) == 0.0 and dh.shape == (0, 8) and not dw.any() and not db.any()


def test_bad_shapes_name_the_expected_ones():
    with pytest.raises(ValueError, match=r"hidden must be \(rows, dim\)"):
        lce.linear_cross_entropy(torch.randn(2, 3, 8), torch.nn.Linear(8, 4), torch.zeros(2, 3, dtype=torch.long))


def test_a_head_with_hooks_is_not_fusable():
    head = torch.nn.Linear(8, 4)
    assert lce.fusable(head)
    head.register_forward_hook(lambda module, args, out: out + 1)
    assert not lce.fusable(head)
