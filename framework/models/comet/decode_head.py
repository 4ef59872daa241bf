"""Next-token logits for a few rows (decoding) on CPU, from a transposed copy of the output embedding.

A decoding step's logits are one (1 x hidden) @ (hidden x vocab) product: a matrix-vector product that reads the
whole output embedding. On CPU, BLAS reads the (vocab, hidden) weight about 3x slower as `F.linear` than as the
right operand of a plain matmul over a (hidden, vocab) copy (4.5 vs 1.5 ms at vocab 32768, hidden 256 on the
project's 2-core machine), so decoding keeps such a copy, made once and made again whenever the weight changes
(another tensor, or an in-place update). The copy costs one more output embedding of memory, on CPU decoding only.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..linear_cross_entropy import fusable  # a plain nn.Linear, no hooks (LoRA's)

_COPIES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def few_row_logits(head: nn.Module, hidden: torch.Tensor, few: int) -> torch.Tensor:
    """`head(hidden)`, through the transposed copy when `hidden` has at most `few` rows, is on CPU, needs no
    gradient, and `head` is a plain `nn.Linear` (no hooks such as LoRA's)."""
    weight = getattr(head, "weight", None)
    if (hidden.shape[-2] > few or hidden.device.type != "cpu" or not fusable(head)
            or (torch.is_grad_enabled() and weight.requires_grad)):
        return head(hidden)
    copy = _COPIES.get(head)
    if copy is None or copy[0]() is not weight or copy[1] != weight._version:
        copy = (weakref.ref(weight), weight._version, weight.detach().t().contiguous())
        _COPIES[head] = copy
    logits = hidden @ copy[2]
    return logits if head.bias is None else logits + head.bias
