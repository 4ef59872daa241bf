"""AdamW groups and the warmup + cosine schedule."""

import math

import pytest
import torch

from framework.job import OptimConfig, OptimConfigError
from framework.methods.optim import build_optimizer, warmup_cosine


def test_memory_params_get_the_multiplier_and_1d_params_no_decay(tiny_comet_model):
    model = tiny_comet_model
    cfg = OptimConfig(lr=1e-3, memory_lr_multiplier=5.0, weight_decay=0.1)
    opt, _ = build_optimizer(model, model.memory_parameters(), cfg, total_steps=10)
    memory = {id(p) for p in model.memory_parameters()}
    seen = set()
    for group in opt.param_groups:
        for p in group["params"]:
            seen.add(id(p))
            assert group["initial_lr"] == pytest.approx(1e-3 * (5.0 if id(p) in memory else 1.0))
            assert group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0)
    assert seen == {id(p) for p in model.parameters()}
    assert {g["name"] for g in opt.param_groups} == {"base", "base_no_decay", "memory", "memory_no_decay"}


def test_schedule_warms_up_then_decays_by_cosine_to_the_floor():
    f = [warmup_cosine(s, 4, 20, 0.1) for s in range(20)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(f[3:], f[4:]))
    assert f[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_scheduler_drives_the_group_lrs(tiny_comet_model):
    model = tiny_comet_model
    cfg = OptimConfig(lr=1e-2, warmup_steps=2)
    opt, sched = build_optimizer(model, model.memory_parameters(), cfg, total_steps=6)
    lrs = []
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
    assert lrs[0]["base"] == pytest.approx(1e-2) and lrs[0]["memory"] == pytest.approx(5e-2)
    assert lrs[-1]["base"] == pytest.approx(0.0, abs=1e-12)


def test_bad_optim_values_are_rejected():
    with pytest.raises(OptimConfigError, match="memory_lr_multiplier"):
        OptimConfig(memory_lr_multiplier=0)


@pytest.fixture
def tiny_comet_model():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    torch.manual_seed(0)
    base = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    return CoMeTForCausalLM.from_base(base, CoMeTConfig(chunk_size=8, global_mem_size=2, temp_stride=4, temp_budget=4))
