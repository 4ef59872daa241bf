"""split_attention: exact unmasked attention (earlier keys + causal segment), and CoMeT's use of it.

The split path must compute what the masked path computes (forward, backward, streaming), run only where the
segment needs no mask (no padding, one document, sdpa backbone, no attention dropout), and never for eager.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, tiny_base, tiny_comet

import framework.models.comet.attention as comet_attention
from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
from framework.models.comet.split_attention import split_attention


# ------------------------------------------------------------------------------------------ the function alone
def reference_attention(query, key, value, scaling):
    """sdpa with the explicit (L, K) mask ones(L, K).tril(K - L), kv heads repeated for GQA."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    n_q, n_k = query.shape[2], key.shape[2]
    mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2)  # (B, L, H, D), split_attention's layout


def qkv(batch, heads, kv_heads, n_q, n_k, dim, dtype, seed=0):
    """Leaf tensors laid out as HF attention passes them: (B, S, H, D) storage seen as (B, H, S, D)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_q, heads, dim, generator=gen, dtype=torch.float64).to(dtype)
    k = torch.randn(batch, n_k, kv_heads, dim, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(batch, n_k, kv_heads, dim, generator=gen, dtype=torch.float64).to(dtype)
    return [t.requires_grad_(True) for t in (q, k, v)]


SHAPES = [  # (heads, kv_heads, queries, keys)
    pytest.param(4, 2, 7, 7, id="gqa-no-prefix"),
    pytest.param(4, 2, 7, 19, id="gqa-prefix"),
    pytest.param(6, 1, 33, 70, id="mqa-long-prefix"),
    pytest.param(2, 2, 1, 5, id="mha-one-query"),
    pytest.param(4, 4, 40, 40, id="mha-no-prefix"),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["float32", "float64"])
@pytest.mark.parametrize("scaling", [None, 0.3])
@pytest.mark.parametrize("heads,kv_heads,n_q,n_k", SHAPES)
def test_split_attention_matches_masked_sdpa_outputs_and_gradients(heads, kv_heads, n_q, n_k, scaling, dtype, tol):
    q, k, v = qkv(2, heads, kv_heads, n_q, n_k, 16, dtype)
    grad_out = torch.randn(2, n_q, heads, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad_out = grad_out.to(dtype)

    ours = split_attention(None, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scaling)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad_out)
    ref = reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scaling)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)

    assert ours.shape == (2, n_q, heads, 16) and ours.dtype == dtype and ours.is_contiguous()
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    for name, a, b in zip("qkv", ours_grads, ref_grads):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m, name=name: f"d{name}: {m}")


def test_split_attention_float64_keeps_float64_precision():
    q, k, v = qkv(2, 4, 2, 7, 19, 16, torch.float64)
    ours = split_attention(None, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None)
    ref = reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("n_q,n_k", [(9, 9), (9, 30)], ids=["no-prefix", "prefix"])
def test_split_attention_bfloat16_forward_is_close(n_q, n_k):
    q, k, v = qkv(2, 4, 2, n_q, n_k, 16, torch.float32)
    with torch.no_grad():
        ours = split_attention(None, *(t.bfloat16().transpose(1, 2) for t in (q, k, v)), None)
        ref = reference_attention(*(t.transpose(1, 2) for t in (q, k, v)), None)  # float32 reference
    assert ours.dtype == torch.bfloat16
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.float(), ref, atol=3e-2, rtol=3e-2)


def test_split_attention_query_sees_the_prefix_and_not_later_segment_keys():
    """A segment key changes only the outputs of queries at or after it; a prefix key changes every query's."""
    q, k, v = (t.detach() for t in qkv(1, 2, 2, 6, 10, 8, torch.float32))
    base = split_attention(None, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None)
    later, prefix = v.clone(), v.clone()
    later[:, 7] += 5.0  # segment key 3 (after 4 prefix keys): queries 0..2 must not see it
    prefix[:, 1] += 5.0  # a prefix key: every query sees it
    out_later = split_attention(None, q.transpose(1, 2), k.transpose(1, 2), later.transpose(1, 2), None)
    out_prefix = split_attention(None, q.transpose(1, 2), k.transpose(1, 2), prefix.transpose(1, 2), None)
    change_later = (out_later - base).abs().amax(dim=(-1, -2))[0]  # per query
    change_prefix = (out_prefix - base).abs().amax(dim=(-1, -2))[0]
    assert change_later[:3].max() == 0
    assert (change_later[3:] > 1e-4).all()
    assert (change_prefix > 1e-4).all()


# ------------------------------------------------------------------------------------------ inside CoMeT
@pytest.fixture
def split_calls(monkeypatch):
    """Counts the calls of split_attention and split_gated_read made by the gated-read attention function."""
    calls = {"n": 0}

    def counting(original):
        def count(*args, **kwargs):
            calls["n"] += 1
            return original(*args, **kwargs)
        return count

    for name in ("split_attention", "split_gated_read"):
        monkeypatch.setattr(comet_attention, name, counting(getattr(comet_attention, name)))
    return calls


@contextlib.contextmanager
def force_masked(monkeypatch):
    """A block in which CoMeT takes the masked path wherever it would split."""
    with monkeypatch.context() as patch:
        patch.setattr(CoMeTForCausalLM, "_splits", lambda self, layer, x: False)
        yield


def train_step(model, ids, **kwargs):
    """(loss, logits, {name: grad}) of one training forward+backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids, **kwargs)
    out.loss.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return out.loss.detach(), out.logits.detach(), grads


def assert_same_grads(a: dict, b: dict, atol=1e-5, rtol=1e-4):
    assert a.keys() == b.keys()
    with_grad = 0
    for name in a:
        assert (a[name] is None) == (b[name] is None), name
        if a[name] is not None:
            with_grad += 1
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
    assert with_grad > 0


def open_gates(model):
    """With neutral_start, make every read gate clearly non-zero so the gated (text-only) pass matters."""
    if model.config.neutral_start:
        with torch.no_grad():
            for nets in model.memory_nets:
                nets.read_gate.copy_(torch.linspace(0.2, 0.9, nets.read_gate.numel()))
        assert all(bool((nets.read_gate != 0).all()) for nets in model.memory_nets)
    else:
        assert all(nets.read_gate is None for nets in model.memory_nets)
    return model


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("neutral_start", [True, False], ids=["neutral", "reference"])
@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_split_and_masked_paths_give_the_same_training_step(family, neutral_start, ckpt, split_calls, monkeypatch):
    model = open_gates(tiny_comet(family, neutral_start=neutral_start, gradient_checkpointing=ckpt))
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(3))  # chunks of 16, 16, 8

    loss_s, logits_s, grads_s = train_step(model, ids)
    n_split = split_calls["n"]
    with force_masked(monkeypatch):
        loss_m, logits_m, grads_m = train_step(model, ids)
    assert n_split > 0, "the split path did not run"
    assert split_calls["n"] == n_split, "the masked path called split_attention"

    torch.testing.assert_close(loss_s, loss_m, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits_s, logits_m, atol=1e-5, rtol=1e-5)
    assert_same_grads(grads_s, grads_m)
    if neutral_start:  # the gates' own gradients come from the gated pass: they must be there and agree
        assert all(grads_s[n].abs().sum() > 0 for n in grads_s if n.endswith("read_gate"))


@pytest.mark.parametrize("neutral_start", [True, False], ids=["neutral", "reference"])
@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_split_and_masked_paths_give_the_same_streamed_logits(family, neutral_start, split_calls, monkeypatch):
    model = open_gates(tiny_comet(family, neutral_start=neutral_start))
    ids = torch.randint(0, VOCAB, (2, 62), generator=torch.Generator().manual_seed(4))
    pieces = [(0, 7), (7, 20), (27, 29)] + [(56 + i, 1) for i in range(6)]  # chunks, partial chunks, tokens

    def streamed():
        stream = model.stream()
        with torch.no_grad():
            return torch.cat([stream.feed(ids[:, s:s + n], logits="all") for s, n in pieces], 1)

    split = streamed()
    n_split = split_calls["n"]
    with force_masked(monkeypatch):
        masked = streamed()
    assert n_split > 0, "the split path did not run"
    assert split_calls["n"] == n_split, "the masked path called split_attention"
    assert split.shape == (2, 62, VOCAB)
    torch.testing.assert_close(split, masked, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and both are what the training forward computes
        torch.testing.assert_close(split, model.eval()(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def eager_twin(model):
    """The same CoMeT weights over an eager-attention backbone."""
    family = model.backbone.config.model_type
    eager = CoMeTForCausalLM.from_base(tiny_base(family, attn="eager"), CoMeTConfig(**model.comet_config.to_dict()))
    eager.load_state_dict(model.state_dict())
    return eager.eval()


@pytest.mark.parametrize("neutral_start", [True, False], ids=["neutral", "reference"])
def test_padding_in_every_chunk_never_splits(neutral_start, split_calls, monkeypatch):
    model = open_gates(tiny_comet("qwen3", neutral_start=neutral_start))
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, [3, 20, 35]] = 0  # a padding token in each chunk of the batch
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        n_split = split_calls["n"]
        with force_masked(monkeypatch):
            masked = model(input_ids=ids, attention_mask=mask).logits
        eager = eager_twin(model)(input_ids=ids, attention_mask=mask).logits
    assert n_split == 0, "split_attention ran on a chunk with padding"
    real = mask.bool()
    assert torch.isfinite(ours[real]).all()
    torch.testing.assert_close(ours, masked, atol=0, rtol=0)
    torch.testing.assert_close(ours[real], eager[real], atol=1e-5, rtol=1e-5)


def test_packed_documents_with_memory_reset_never_split(split_calls):
    model = open_gates(tiny_comet("llama", reset_memory_at_doc_boundaries=True))
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(6))
    docs = torch.cat([torch.zeros(2, 21), torch.ones(2, 19)], 1).long()
    loss, _, grads = train_step(model, ids, document_ids=docs)
    assert split_calls["n"] == 0, "split_attention ran with document resets"
    with torch.no_grad():
        eager = eager_twin(model)(input_ids=ids, document_ids=docs).logits
    assert torch.isfinite(loss) and all(g is None or torch.isfinite(g).all() for g in grads.values())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, document_ids=docs).logits, eager, atol=1e-5, rtol=1e-5)
    assert split_calls["n"] == 0


@pytest.mark.parametrize("neutral_start", [True, False], ids=["neutral", "reference"])
def test_eager_backbone_never_splits(neutral_start, split_calls):
    model = open_gates(tiny_comet("qwen3", neutral_start=neutral_start))
    eager = eager_twin(model)
    assert eager.backbone.config._attn_implementation == "eager"
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(7))
    x = torch.zeros(1, 1, 64)
    assert not any(eager._splits(layer, x) for layer in eager.layers)
    for ckpt in (False, True):
        eager.config.gradient_checkpointing = ckpt
        train_step(eager, ids)
    with torch.no_grad():
        stream = eager.stream()
        for s, n in ((0, 7), (7, 20), (27, 3), (30, 1), (31, 1)):
            stream.feed(ids[:, s:s + n], logits="all")
        eager.generate(ids[:, :20], max_new_tokens=3)
    assert split_calls["n"] == 0, "an eager backbone used split_attention"
    with torch.no_grad():  # the same weights on sdpa do split: the count above is not vacuous
        model(input_ids=ids)
    assert split_calls["n"] > 0


def test_attention_dropout_in_training_never_splits(split_calls):
    base = tiny_base("llama")
    base.config.attention_dropout = 0.1
    for layer in base.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model = CoMeTForCausalLM.from_base(base, CoMeTConfig(chunk_size=16, global_mem_size=4, temp_stride=4,
                                                         temp_budget=8))
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(8))
    train_step(model, ids)
    assert split_calls["n"] == 0, "split_attention ran with attention dropout active"
    with torch.no_grad():  # in eval mode dropout is off: the split path runs
        model.eval()(input_ids=ids)
    assert split_calls["n"] > 0
