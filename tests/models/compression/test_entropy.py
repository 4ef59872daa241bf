"""token_nll (framework/models/compression/entropy.py): the per-sample mean next-token NLL."""

import pytest
import torch
import torch.nn.functional as F

from compression_helpers import tiny_base
from framework.models.compression.entropy import token_nll


def _direct(lm, ids):
    """Mean NLL of one unpadded sample, straight from F.cross_entropy on shifted logits."""
    with torch.no_grad():
        logits = lm(input_ids=ids[None]).logits[0]
    return F.cross_entropy(logits[:-1].float(), ids[1:])


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_matches_direct_cross_entropy_with_padding(family):
    lm = tiny_base(family, vocab=300)
    g = torch.Generator().manual_seed(1)
    samples = [torch.randint(0, 300, (n,), generator=g) for n in (12, 7, 2)]
    expected = torch.stack([_direct(lm, s) for s in samples])
    width = 12
    right = torch.zeros(3, width, dtype=torch.long)
    left = torch.zeros(3, width, dtype=torch.long)
    rmask, lmask = torch.zeros(3, width, dtype=torch.long), torch.zeros(3, width, dtype=torch.long)
    for i, s in enumerate(samples):
        right[i, :len(s)], rmask[i, :len(s)] = s, 1
        left[i, width - len(s):], lmask[i, width - len(s):] = s, 1
    got_right = token_nll(lm, right, rmask)
    got_left = token_nll(lm, left, lmask)
    assert got_right.shape == (3,) and got_right.dtype == torch.float32
    assert torch.allclose(got_right, expected, atol=1e-5)
    assert torch.allclose(got_left, expected, atol=1e-5)
    assert not got_right.requires_grad
    # no mask: every token is real
    assert torch.allclose(token_nll(lm, samples[0][None]), expected[:1], atol=1e-5)


def test_samples_without_a_target_are_rejected():
    lm = tiny_base("llama", vocab=300)
    ids = torch.randint(0, 300, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"samples \[1\].*at least 2 tokens"):
        token_nll(lm, ids, mask)
