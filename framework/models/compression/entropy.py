"""The entropy of a text "measured by a model" (methods.md §4): the mean next-token negative
log-likelihood of the text under a causal LM's own head, per sample.

    nll = token_nll(encoder_lm, input_ids, attention_mask)     # Tensor[B], nats per predicted token

Under the encoder's LM this is the encoder-measured entropy the study correlates (negatively) with
reconstruction quality; under the decoder's LM, the decoder-measured one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean of -log p(x_t | x_<t) over the positions t where x_t and x_{t-1} are both real.

    model: any Hugging Face causal LM (``AutoModelForCausalLM``; it returns ``.logits``).
    input_ids, attention_mask: [B, T]; mask 1 = real token, 0 = padding, on either side (positions are
    counted over the real tokens only, so left and right padding give the same values).
    Returns float32 [B] on the model's device, in nats. Runs without gradients."""
    mask = batch_mask(input_ids, attention_mask)
    valid = mask[:, 1:] & mask[:, :-1]
    counts = valid.sum(dim=1)
    if bool((counts == 0).any()):
        bad = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"samples {bad} have fewer than 2 real tokens, so no next token to predict. "
                         "Fix: drop them or give them at least 2 tokens")
    device = getattr(model, "device", input_ids.device)
    ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
        valid = valid.to(device)
        return (nll * valid).sum(dim=1) / valid.sum(dim=1)


def batch_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, error: type = ValueError) -> torch.Tensor:
    """The bool mask of a [batch, tokens] batch (all real when ``attention_mask`` is None); raises
    ``error`` naming the fix when the shapes are not a batch or do not match."""
    if input_ids.dim() != 2:
        raise error(f"input_ids has shape {tuple(input_ids.shape)}; expected [batch, tokens]. "
                    "Fix: add a batch dimension (input_ids[None])")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if mask.shape != input_ids.shape:
        raise error(f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(input_ids.shape)}. "
                    "Fix: pass the tokenizer's attention_mask of the same batch")
    return mask
