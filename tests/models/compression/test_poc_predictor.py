"""PoC's context-aware predictor (framework/models/compression/poc_predictor.py) on tiny random LMs."""

import json
import os

import pytest
import torch

from compression_helpers import tiny_base
from framework.metrics.poc_metrics import mean_retention_curve, ppe, two_stage_search
from framework.models.compression.poc_predictor import PoCPredictor, PoCPredictorError, ratio_bin

V = 300
RATIOS = torch.tensor([0.1, 0.35, 0.5, 1.0])


def _predictor(family="llama", layers=2, **kw):
    return PoCPredictor.from_causal_lm(tiny_base(family, vocab=V, layers=layers), layers, **kw).eval()


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0      # right padded
    mask[2, :4] = 0      # left padded
    return ids, mask


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_shapes_range_and_padding(family):
    p = _predictor(family, ratio_bins=20)
    ids, mask = _batch()
    out = p(ids, mask, RATIOS)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    assert bool(((out > 0) & (out < 1)).all())
    per_row = p(ids, mask, RATIOS[None].repeat(3, 1).flip(1))
    assert torch.allclose(per_row, out.flip(1), atol=1e-6)
    # each padded row predicts what its unpadded context predicts alone
    assert torch.allclose(out[1], p(ids[1:2, :6], None, RATIOS)[0], atol=1e-5)
    assert torch.allclose(out[2], p(ids[2:3, 4:], None, RATIOS)[0], atol=1e-5)


def test_isolated_pairs_one_forward_equals_separate_forwards():
    p = _predictor("qwen3", ratio_bins=20)
    ids, mask = _batch()
    together = p(ids, mask, RATIOS)
    apart = torch.stack([p(ids, mask, RATIOS[j:j + 1])[:, 0] for j in range(len(RATIOS))], dim=1)
    assert torch.allclose(together, apart, atol=1e-5)
    # the context matters
    other = ids.clone()
    other[:, 0] = (other[:, 0] + 1) % V
    assert not torch.allclose(p(other, mask, RATIOS), together)


def test_causal_pairs_depend_on_earlier_ratios_only():
    p = _predictor("llama", ratio_bins=20, pair_attention="causal")
    ids, mask = _batch()
    base = p(ids, mask, RATIOS)
    later_changed = p(ids, mask, torch.tensor([0.1, 0.35, 0.9, 0.2]))
    assert torch.allclose(base[:, :2], later_changed[:, :2], atol=1e-5)
    assert torch.allclose(base[:, 0], p(ids, mask, RATIOS[:1])[:, 0], atol=1e-5)
    assert not torch.allclose(base[:, 3], later_changed[:, 3])


def test_gradients_reach_head_embeddings_and_trunk():
    p = _predictor("llama", ratio_bins=20).train()
    ids, mask = _batch()
    p.loss(p(ids, mask, RATIOS), torch.full((3, 4), 0.5)).backward()
    for name in ("head.weight", "head.bias", "slot_embed", "trunk.embed_tokens.weight",
                 "trunk.layers.0.self_attn.q_proj.weight", "trunk.layers.1.mlp.up_proj.weight", "trunk.norm.weight"):
        grad = dict(p.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    used = ratio_bin(RATIOS, 20)
    grad = p.ratio_embed.weight.grad
    assert bool((grad[used].abs().sum(-1) > 0).all())
    assert float(grad.abs().sum()) == pytest.approx(float(grad[used].abs().sum()))


def test_from_causal_lm_copies_the_first_layers():
    lm = tiny_base("qwen3", vocab=V, layers=3)
    p = PoCPredictor.from_causal_lm(lm, 2)
    assert p.trunk.config.num_hidden_layers == 2 and len(p.trunk.layers) == 2
    src = lm.model.layers[1].mlp.down_proj.weight
    dst = p.trunk.layers[1].mlp.down_proj.weight
    assert torch.equal(src, dst) and dst.data_ptr() != src.data_ptr()
    assert torch.equal(p.trunk.norm.weight, lm.model.norm.weight)
    with pytest.raises(PoCPredictorError, match="between 1 and 3"):
        PoCPredictor.from_causal_lm(lm, 4)


def test_ratio_bins_and_validation():
    assert ratio_bin(torch.tensor([0.01, 0.1, 0.1001, 0.5, 0.55, 1.0]), 10).tolist() == [0, 0, 1, 4, 5, 9]
    assert ratio_bin(torch.arange(1, 362, dtype=torch.float64) / 361, 361).tolist() == list(range(361))
    p = _predictor("llama", layers=1, ratio_bins=10)
    ids, mask = _batch()
    with pytest.raises(PoCPredictorError, match=r"\(0, 1\]"):
        p(ids, mask, torch.tensor([0.0, 0.5]))
    with pytest.raises(PoCPredictorError, match=r"1 / factor"):
        p(ids, mask, torch.tensor([4.0]))
    with pytest.raises(PoCPredictorError, match=r"\[3, R\]"):
        p(ids, mask, torch.ones(2, 2) / 2)
    with pytest.raises(PoCPredictorError, match="pair_attention"):
        PoCPredictor(p.trunk, pair_attention="full")


def test_save_load_round_trip(tmp_path):
    p = _predictor("qwen3", ratio_bins=16, pair_attention="causal")
    with torch.no_grad():
        p.head.bias.fill_(0.3)
    ids, mask = _batch()
    before = p(ids, mask, RATIOS)
    p.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "poc_predictor.json", "poc_predictor.safetensors"]
    meta = json.loads((tmp_path / "poc_predictor.json").read_text())
    assert meta["ratio_bins"] == 16 and meta["pair_attention"] == "causal" and meta["trunk_model_type"] == "qwen3"
    q = PoCPredictor.from_pretrained(tmp_path).eval()
    assert torch.equal(q(ids, mask, RATIOS), before)
    eager = PoCPredictor.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.trunk.config._attn_implementation == "eager"
    assert torch.allclose(eager(ids, mask, RATIOS), before, atol=1e-5)   # the same masking without sdpa
    with pytest.raises(PoCPredictorError, match="save_pretrained"):
        PoCPredictor.from_pretrained(tmp_path / "nowhere")


# synthetic retention: a context of one repeated token compresses well (retention r ** 0.3), a context of
# all-distinct tokens badly (r ** 2.5), so no single curve fits both
T = 8
GRID = torch.arange(1, 9, dtype=torch.float32) / 8


def _synthetic(n, g):
    hard = torch.rand(n, generator=g) < 0.5
    distinct = torch.argsort(torch.rand(n, V, generator=g), dim=1)[:, :T]
    repeated = torch.randint(0, V, (n, 1), generator=g).expand(n, T)
    ids = torch.where(hard[:, None], distinct, repeated)
    return ids, GRID[None] ** torch.where(hard, 2.5, 0.3)[:, None], hard


@pytest.fixture
def one_thread():
    """One intra-op thread: this tiny model only loses time to thread hand-offs on a shared machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_short_training_beats_the_mean_curve_on_held_out_contexts(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    test_ids, test_y, test_hard = _synthetic(128, g)
    p = _predictor("llama", layers=2, ratio_bins=8).train()
    opt = torch.optim.AdamW(p.parameters(), lr=3e-3)
    seen = []
    for _ in range(200):
        ids, y, _ = _synthetic(16, g)        # fresh contexts every step: held-out ones are new
        seen.append(y)
        loss = p.loss(p(ids, None, GRID), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()
    with torch.no_grad():
        pred = p(test_ids, None, GRID)
    curve = mean_retention_curve(GRID, torch.cat(seen))
    aware, agnostic = ppe(pred, test_y), ppe(curve(GRID).expand_as(test_y), test_y)
    assert aware < 0.25 * agnostic, (aware, agnostic)
    # the search picks more compression for an easy context than for a hard one at the same floor
    easy, hard = int((~test_hard).nonzero()[0]), int(test_hard.nonzero()[0])
    # (true answers 0.7 ** (1 / 0.3) = 0.30 and 0.7 ** (1 / 2.5) = 0.87; the 8 bins round them to bin edges)
    r_easy = two_stage_search(p.retention_fn(test_ids[easy]), floor=0.7)
    r_hard = two_stage_search(p.retention_fn(test_ids[hard]), floor=0.7)
    assert r_easy + 0.25 < r_hard, (r_easy, r_hard)
