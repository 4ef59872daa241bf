"""Neutral start: an untrained CoMeT wrapper reads text as the base model reads each chunk's window alone,
and training can open the memory from there. Also the streaming path with no global memory."""

import os

import pytest
import torch
from conftest import VOCAB, tiny_base, tiny_comet

from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

CFG = dict(chunk_size=16, global_mem_size=4, temp_stride=4, temp_budget=8)


def window_logits(base, ids, size):
    """The base model over each window of `size` tokens alone."""
    with torch.no_grad():
        return torch.cat([base(input_ids=ids[:, i:i + size]).logits for i in range(0, ids.shape[1], size)], 1)


def trained_tiny_base(family, steps=30):
    """A tiny model trained a few steps on a repeating pattern, so that its attention is not uniform noise."""
    base = tiny_base(family).train()
    opt = torch.optim.AdamW(base.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, VOCAB, (1, 12), generator=gen)
    for _ in range(steps):
        ids = pattern.repeat(4, 5)[:, torch.randint(0, 12, (1,), generator=gen).item():][:, :48]
        loss = base(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return base.eval()


@pytest.mark.parametrize("paths", [dict(CFG), dict(CFG, global_mem_size=0), dict(CFG, temp_stride=-1, temp_budget=0)])
def test_untrained_wrapper_equals_the_base_on_each_window(family, paths):
    base = trained_tiny_base(family)
    model = CoMeTForCausalLM.from_base(base, CoMeTConfig(**paths)).eval()
    ids = torch.randint(0, VOCAB, (2, 70))
    expected = window_logits(base, ids, paths["chunk_size"])
    with torch.no_grad():
        forward = model(input_ids=ids).logits
        streamed = model.stream().feed(ids, logits="all")
    torch.testing.assert_close(forward, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(streamed, expected, atol=1e-5, rtol=1e-5)


def test_greedy_generation_of_the_untrained_wrapper_follows_the_window():
    base = tiny_base("llama")
    model = CoMeTForCausalLM.from_base(base, CoMeTConfig(**CFG)).eval()
    prompt = torch.randint(0, VOCAB, (1, 35))  # the open chunk holds tokens 32..34
    new = model.generate(input_ids=prompt, max_new_tokens=6)
    window = prompt[:, 32:]
    with torch.no_grad():
        for _ in range(6):  # the same chunk keeps filling: the base model on the window alone
            window = torch.cat([window, base(input_ids=window).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(new[:, 32:], window)


def test_reference_switch_reads_memory_from_the_start():
    base = tiny_base("qwen3")
    ids = torch.randint(0, VOCAB, (1, 48))
    reference = CoMeTForCausalLM.from_base(base, CoMeTConfig(**CFG, neutral_start=False)).eval()
    with torch.no_grad():
        out = reference(input_ids=ids).logits
    assert not torch.allclose(out, window_logits(base, ids, 16), atol=1e-3)
    assert all(nets.read_gate is None for nets in reference.memory_nets)


def test_read_gate_starts_at_zero_and_gets_a_gradient():
    model = CoMeTForCausalLM.from_base(tiny_base("llama"), CoMeTConfig(**CFG)).train()
    ids = torch.randint(0, VOCAB, (2, 48))
    model(input_ids=ids, labels=ids).loss.backward()
    for nets in model.memory_nets:
        assert torch.count_nonzero(nets.read_gate) == 0
        assert nets.read_gate.grad is not None and nets.read_gate.grad.abs().sum() > 0
        assert torch.count_nonzero(nets.global_mem.adapter.up.weight) == 0  # adapters start as the identity


def test_an_open_gate_lets_the_first_chunk_reach_later_chunks():
    model = tiny_comet("qwen3")  # memory parameters moved off their init, read gates included
    ids = torch.randint(0, VOCAB, (1, 48))
    other = ids.clone()
    other[:, :16] = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=other).logits
    assert not torch.allclose(a[:, 16:], b[:, 16:], atol=1e-4)


def test_gated_read_positions_keep_text_contiguous():
    model = CoMeTForCausalLM.from_base(tiny_base("llama"), CoMeTConfig(**CFG))
    valid = torch.ones(1, 10, dtype=torch.bool)
    plans = model._plan_chunks(valid, torch.zeros(1, 10, dtype=torch.long), mask_cache={})
    plan = plans[0][2]
    text_pos = plan.positions[0, plan.text_rows]
    comp_pos = plan.positions[0, plan.comp_rows]
    assert text_pos.tolist() == list(range(10))
    assert comp_pos.tolist() == [3, 7, 9]  # each shares its group's last text token's position


def save_legacy_layout(model, directory, comet_fields: dict) -> None:
    """The folder layout of format_version 1: the backbone's own checkpoint, comet.safetensors, comet_config.json."""
    import json

    from safetensors.torch import save_file

    model.backbone.save_pretrained(directory)
    save_file({k: v.contiguous() for k, v in model.comet_state_dict().items()}, os.path.join(directory, "comet.safetensors"))
    with open(os.path.join(directory, "comet_config.json"), "w") as fh:
        json.dump({"format_version": 1, "comet_config": comet_fields, "backbone_model_type": "qwen3"}, fh)


def test_old_checkpoints_load_with_the_reference_formulation(tmp_path):
    model = tiny_comet("qwen3", neutral_start=False)
    fields = model.comet_config.to_dict()
    del fields["neutral_start"]  # as written before the fields existed
    del fields["read_gate_scale"]
    save_legacy_layout(model, tmp_path, fields)
    loaded = CoMeTForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.neutral_start is False and loaded.config.read_gate_scale == 1.0
    ids = torch.randint(0, VOCAB, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("neutral_start", [True, False])
def test_streaming_without_global_memory_crosses_full_chunks(neutral_start):
    """global_mem_size=0 with chunk_size a multiple of temp_stride: closing a full chunk adds no rows at all."""
    model = tiny_comet("llama", global_mem_size=0, neutral_start=neutral_start)
    ids = torch.randint(0, VOCAB, (1, 53))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        stream = model.stream()
        pieces = [stream.feed(ids[:, i:i + 1], logits="all") for i in range(53)]
        generated = model.generate(input_ids=ids[:, :16], max_new_tokens=20)
    torch.testing.assert_close(torch.cat(pieces, 1), expected, atol=1e-5, rtol=1e-5)
    assert generated.shape == (1, 36)


def test_the_gated_read_is_causal():
    """With open read gates, a token's logits do not depend on any later token (same chunk or later chunks)."""
    model = tiny_comet("mistral")
    ids = torch.randint(0, VOCAB, (1, 50))
    for cut in (5, 16, 23, 40):
        other = ids.clone()
        other[:, cut:] = torch.randint(0, VOCAB, (1, 50 - cut))
        with torch.no_grad():
            a, b = model(input_ids=ids).logits, model(input_ids=other).logits
        torch.testing.assert_close(a[:, :cut], b[:, :cut], atol=1e-6, rtol=1e-6)


def test_read_gate_scale_multiplies_the_gate():
    """read_gate_scale x parameter is the gate: scale 2 with parameter p equals scale 1 with parameter 2p."""
    one = tiny_comet("qwen3", read_gate_scale=1.0)
    two = tiny_comet("qwen3", read_gate_scale=2.0)
    with torch.no_grad():
        for a, b in zip(one.memory_nets, two.memory_nets):
            a.read_gate.copy_(b.read_gate * 2)
    ids = torch.randint(0, VOCAB, (1, 48))
    with torch.no_grad():
        torch.testing.assert_close(one(input_ids=ids).logits, two(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
