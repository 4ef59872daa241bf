"""SWAT attention pieces: slopes follow the paper, and the blocked banded attention equals a dense reference."""

import pytest
import torch

from framework.models.swat import SWATConfigError, apply_rope, banded_attention, rope_cos_sin, swat_slopes

SLOPE_MODES = ("balanced", "negative", "positive", "none")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see tests/conftest.py


def dense_reference(q, k, v, slopes, window, normalization, rope, theta=10000.0):
    """Straightforward SWAT attention: full N x N scores, per-head linear bias, band mask.

    q, k, v: (B, H, N, d) *before* RoPE. RoPE here is written out independently (half-split pairs).
    """
    n, d = q.shape[-2], q.shape[-1]
    pos = torch.arange(n, dtype=torch.float64)
    if rope:
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = pos[:, None] * inv_freq[None, :]
        cos, sin = ang.cos().to(q.dtype), ang.sin().to(q.dtype)

        def rot(x):
            x1, x2 = x[..., : d // 2], x[..., d // 2:]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

        q, k = rot(q), rot(k)
    dist = pos[:, None] - pos[None, :]  # m - n
    scores = q @ k.transpose(-1, -2) / d ** 0.5 + slopes.to(q.dtype)[:, None, None] * dist.to(q.dtype)
    band = (dist >= 0) & (dist < window)
    if normalization == "sigmoid":
        weights = torch.sigmoid(scores) * band
    else:
        weights = scores.masked_fill(~band, float("-inf")).softmax(-1)
    return weights @ v


def _qkv(batch=2, heads=4, n=37, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, d, generator=g, dtype=dtype) for _ in range(3)]


def _banded(q, k, v, slopes, window, normalization, rope, block_size, **kw):
    if rope:
        cos, sin = rope_cos_sin(torch.arange(q.shape[-2]), q.shape[-1], 10000.0, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return banded_attention(q, k, v, slopes, window, normalization, block_size, **kw)


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("normalization", ["sigmoid", "softmax"])
@pytest.mark.parametrize("mode", SLOPE_MODES)
def test_banded_equals_dense_reference(mode, normalization, rope):
    """N=37 is not a multiple of block_size=7, and block_size != window=10."""
    q, k, v = _qkv()
    slopes = swat_slopes(4, mode)
    expected = dense_reference(q, k, v, slopes, 10, normalization, rope)
    got = _banded(q, k, v, slopes, 10, normalization, rope, block_size=7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [None, 1, 3, 16, 100])
@pytest.mark.parametrize("window", [1, 5, 37, 60])
def test_result_does_not_depend_on_block_size(block_size, window):
    q, k, v = _qkv(n=29, seed=1)
    slopes = swat_slopes(4, "balanced")
    expected = dense_reference(q, k, v, slopes, window, "sigmoid", rope=True)
    torch.testing.assert_close(_banded(q, k, v, slopes, window, "sigmoid", True, block_size), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["sigmoid", "softmax"])
def test_queries_after_cached_keys_match_the_last_rows(normalization):
    """With Nk > Nq (keys from a cache in front), queries are the last Nq positions."""
    q, k, v = _qkv(n=30, seed=2)
    slopes = swat_slopes(4, "balanced")
    full = banded_attention(q, k, v, slopes, 6, normalization, 4)
    for n_q in (1, 5, 13):
        part = banded_attention(q[..., -n_q:, :], k, v, slopes, 6, normalization, 4)
        torch.testing.assert_close(part, full[..., -n_q:, :], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("normalization", ["sigmoid", "softmax"])
def test_left_padding_is_invisible_to_real_tokens(normalization):
    q, k, v = _qkv(batch=1, n=20, seed=3)
    slopes = swat_slopes(4, "negative")
    plain = banded_attention(q, k, v, slopes, 5, normalization, 3)
    pad = 4
    padded = [torch.cat([torch.randn(1, 4, pad, 8), x], dim=2) for x in (q, k, v)]
    mask = torch.ones(1, 20 + pad, dtype=torch.bool)
    mask[:, :pad] = False
    out = banded_attention(*padded, slopes, 5, normalization, 3, key_mask=mask)
    torch.testing.assert_close(out[..., pad:, :], plain, atol=1e-6, rtol=1e-6)
    assert torch.all(out[..., :pad, :] == 0) and torch.isfinite(out).all()


def test_no_score_block_is_wider_than_block_plus_window(monkeypatch):
    """Memory is linear in N: every score matrix is at most block_size x (block_size + window - 1)."""
    widths = []
    real_matmul = torch.matmul

    def spy(a, b):
        out = real_matmul(a, b)
        widths.append(tuple(out.shape[-2:]))
        return out

    monkeypatch.setattr(torch, "matmul", spy)
    q, k, v = _qkv(batch=1, heads=2, n=300, seed=4)
    banded_attention(q, k, v, swat_slopes(2, "balanced"), 16, "sigmoid", 8)
    score_shapes = widths[0::2]  # (scores, weights @ v) alternate
    assert max(w for _, w in score_shapes) <= 8 + 16 - 1
    assert max(h for h, _ in score_shapes) <= 8


def test_slopes_follow_the_paper_formula():
    h = 2.0 ** -torch.arange(1, 5)  # 1/2, 1/4, 1/8, 1/16
    assert torch.equal(swat_slopes(8, "balanced"), torch.cat([-h, h]))
    assert swat_slopes(8, "balanced").tolist() == [-0.5, -0.25, -0.125, -0.0625, 0.5, 0.25, 0.125, 0.0625]
    assert swat_slopes(8, "negative").tolist() == [-(2.0 ** -k) for k in range(1, 9)]
    assert swat_slopes(8, "positive").tolist() == [2.0 ** -k for k in range(1, 9)]
    assert swat_slopes(8, "none").tolist() == [0.0] * 8
    assert swat_slopes(2, "balanced").tolist() == [-0.5, 0.5]


def test_slopes_reject_bad_arguments():
    with pytest.raises(SWATConfigError, match="even head count"):
        swat_slopes(5, "balanced")
    with pytest.raises(SWATConfigError, match="must be one of"):
        swat_slopes(4, "alibi")


def test_rope_angles_are_position_wise():
    """A position's rotation is the same wherever it is computed (needed for decoding past the window)."""
    cos_all, sin_all = rope_cos_sin(torch.arange(1000), 8, 10000.0, torch.float32)
    cos_one, sin_one = rope_cos_sin(torch.tensor([[777]]), 8, 10000.0, torch.float32)
    assert torch.equal(cos_all[:, :, 777:778], cos_one) and torch.equal(sin_all[:, :, 777:778], sin_one)
