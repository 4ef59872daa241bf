"""Summed next-token cross-entropy of an LM head, a block of rows at a time, without keeping any logits.

`F.cross_entropy(lm_head(h))` keeps the (rows x vocab) logits and their log-softmax for backward: at 2,048 rows and a
32,768-token vocabulary that is 0.5 GB per chunk in fp32, several times the rest of a small model's activations.
Here the forward pass computes the loss a block of rows at a time and keeps only the hidden states; the backward
pass computes each block's logits again, turns them into the gradient (softmax minus the one-hot target) and
multiplies it out into the hidden states' and the head's gradients at once. The matrix products are those of
activation checkpointing (forward, recompute, two for the gradients); the memory is one block's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_ELEMENTS = 1 << 22  # logits per block: 16 MB in fp32


def _block_rows(vocab: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(vocab, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        rows = _block_rows(weight.shape[0])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], rows):
            logits = F.linear(hidden[s:s + rows], weight, bias).float()
            picked = logits.gather(1, targets[s:s + rows, None]).squeeze(1)
            total += (logits.logsumexp(dim=-1) - picked).sum()
        ctx.save_for_backward(hidden, weight, bias, targets)
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets = ctx.saved_tensors
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        rows = _block_rows(weight.shape[0])
        acc = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        d_hidden = torch.empty_like(hidden) if want_h else None
        d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        d_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if want_b and bias is not None else None
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s:s + rows]
            probs = F.linear(h, weight, bias).float().softmax(dim=-1)
            probs[torch.arange(h.shape[0], device=h.device), targets[s:s + rows]] -= 1.0
            d_logits = (probs * grad).to(weight.dtype)
            if d_hidden is not None:
                d_hidden[s:s + rows] = d_logits @ weight
            if d_weight is not None:
                d_weight.addmm_(d_logits.t().to(acc), h.to(acc))
            if d_bias is not None:
                d_bias += d_logits.sum(dim=0, dtype=acc)
        cast = lambda t: None if t is None else t.to(weight.dtype)  # noqa: E731
        return d_hidden, cast(d_weight), cast(d_bias), None


def fusable(head: nn.Module) -> bool:
    """Whether `head` is a plain `nn.Linear` that `linear_cross_entropy` may bypass (no hooks, e.g. LoRA's)."""
    return type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks


def linear_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """sum_i CE(head(hidden[i]), targets[i]) in fp32 for hidden (N, d) and targets (N,) (every row labelled)."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (rows, dim) and targets (rows,); got {tuple(hidden.shape)} and "
                         f"{tuple(targets.shape)}")
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets.long())
