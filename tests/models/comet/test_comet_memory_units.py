"""The gate, the FIFO queue and config validation, in isolation."""

import pytest
import torch

from framework.models.comet import CoMeTConfig, CoMeTConfigError
from framework.models.comet.memory import GlobalMemory, fifo_select


def test_gate_is_one_scalar_per_slot_and_follows_the_formula():
    torch.manual_seed(0)
    net = GlobalMemory(dim=8, rank=2, eps=1e-6)
    assert net.gate.weight.shape == (1, 16) and net.gate.bias is None
    r1, r2 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    memory1, state1 = net.update(r1, None)
    torch.testing.assert_close(state1, net.norm(r1))  # first chunk: no gate
    torch.testing.assert_close(memory1, state1 + net.adapter.up(net.adapter.down(state1)))
    memory2, state2 = net.update(r2, state1)
    cand = net.norm(r2)
    g = torch.sigmoid(cand @ net.gate.weight[0, :8] + state1 @ net.gate.weight[0, 8:])[..., None]
    torch.testing.assert_close(state2, g * state1 + (1 - g) * cand)
    assert g.shape == (2, 3, 1)


def test_gate_saturation_keeps_or_overwrites():
    net = GlobalMemory(dim=4, rank=1, eps=1e-6)
    state, r = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    for logit, expected in ((60.0, state), (-60.0, net.norm(r))):
        _, new_state = _with_constant_gate(net, r, state, logit)
        torch.testing.assert_close(new_state, expected, atol=1e-5, rtol=1e-5)


def _with_constant_gate(net, r, state, logit):
    """Run the update with the gate forced to sigmoid(logit) via a gate that ignores its input."""
    class ConstantGate(torch.nn.Module):
        def forward(self, x):
            return torch.full((*x.shape[:-1], 1), logit)

    original = net.gate
    net.gate = ConstantGate()
    try:
        return net.update(r, state)
    finally:
        net.gate = original


def test_fresh_flag_restarts_one_sequence_only():
    torch.manual_seed(1)
    net = GlobalMemory(dim=8, rank=2, eps=1e-6)
    state, r = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    _, gated = net.update(r, state)
    _, mixed = net.update(r, state, fresh=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], net.norm(r)[0])
    torch.testing.assert_close(mixed[1], gated[1])


def test_fifo_keeps_newest_in_order():
    idx, valid = fifo_select(torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool), budget=5)
    assert idx.tolist() == [[2, 3, 4, 5, 6]] and valid.all()


def test_fifo_evicts_padding_first():
    old = torch.tensor([[True, True, False]])
    new = torch.tensor([[True, False]])
    idx, valid = fifo_select(old, new, budget=3)
    assert idx.tolist() == [[0, 1, 3]]  # the newest entry (4) is padding, so it goes before older real ones
    assert valid.tolist() == [[True, True, True]]


def test_fifo_under_budget_keeps_everything_with_flags():
    idx, valid = fifo_select(torch.zeros(2, 0, dtype=torch.bool), torch.tensor([[True, False], [False, False]]), budget=8)
    assert idx.tolist() == [[0, 1], [0, 1]]
    assert valid.tolist() == [[True, False], [False, False]]


@pytest.mark.parametrize("fields, field", [
    (dict(temp_budget=100, temp_stride=8), "temp_budget"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(global_mem_size=-1), "global_mem_size"),
    (dict(temp_stride=0), "temp_stride"),
    (dict(adapter_rank=0), "adapter_rank"),
    (dict(chunk_size=4, temp_stride=8, temp_budget=16), "temp_stride"),
    (dict(chunk_size="2048"), "chunk_size"),
    (dict(global_mem_size=0, temp_stride=-1), "global_mem_size"),
])
def test_invalid_config_names_field_and_fix(fields, field):
    with pytest.raises(CoMeTConfigError) as err:
        CoMeTConfig(**fields)
    assert f"CoMeTConfig.{field}=" in str(err.value) and "Fix:" in str(err.value)


def test_unknown_field_in_saved_config():
    with pytest.raises(CoMeTConfigError, match="unknown CoMeTConfig field"):
        CoMeTConfig.from_dict({"chunk_size": 16, "chunk_sise": 3})


def test_paper_defaults():
    cfg = CoMeTConfig()
    assert (cfg.chunk_size, cfg.global_mem_size, cfg.temp_stride, cfg.temp_budget, cfg.adapter_rank) == (2048, 512, 8, 2048, 8)
