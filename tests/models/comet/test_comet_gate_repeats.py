"""Gate repeats (CoMeTConfig.gate_repeat_max): in training, a chunk's gated update counts as k identical ones."""

import pytest
import torch

from framework.models.comet import CoMeTConfig, CoMeTConfigError
from framework.models.comet.memory import GlobalMemory
from framework.models.comet.planning import sample_gate_repeats

from conftest import tiny_comet


def test_repeats_equal_k_updates_with_the_same_gate_and_candidate():
    torch.manual_seed(0)
    net = GlobalMemory(dim=8, rank=2, eps=1e-6)
    state, r = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    cand = net.norm(r)
    g = torch.sigmoid(net.gate(torch.cat([cand, state], dim=-1)))
    k = torch.tensor([1.0, 3.0, 7.0])
    _, repeated = net.update(r, state, repeats=k)
    for row, steps in enumerate(k.long().tolist()):
        s = state[row]
        for _ in range(steps):  # the plain update applied `steps` times, gate and candidate held fixed
            s = g[row] * s + (1 - g[row]) * cand[row]
        torch.testing.assert_close(repeated[row], s)


def test_one_repeat_is_the_plain_update():
    torch.manual_seed(1)
    net = GlobalMemory(dim=8, rank=2, eps=1e-6)
    state, r = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(net.update(r, state, repeats=torch.ones(2))[1], net.update(r, state)[1])


def test_a_thousand_repeats_keep_gradient_where_the_gate_nearly_holds():
    """g = sigmoid(7): k (1 - g) is about 1 at k = 1000, so g**k still moves with the logit."""
    net = GlobalMemory(dim=4, rank=1, eps=1e-6)
    with torch.no_grad():
        net.gate.weight.zero_()
    logit = torch.tensor(7.0, requires_grad=True)

    class Gate(torch.nn.Module):
        def forward(self, x):
            return logit.expand(*x.shape[:-1], 1)

    net.gate = Gate()
    state, r = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    _, new = net.update(r, state, repeats=torch.tensor([1000.0]))
    kept = (torch.sigmoid(torch.tensor(7.0, dtype=torch.float64)) ** 1000).float()
    torch.testing.assert_close(new, kept * state + (1 - kept) * net.norm(r))
    (new - net.norm(r)).pow(2).sum().backward()
    assert logit.grad.abs() > 1e-3


def test_sampled_repeats_are_one_or_log_uniform_in_range():
    torch.manual_seed(2)
    k = sample_gate_repeats(20000, 4096.0, 0.5, "cpu")
    assert k.min() >= 1 and k.max() <= 4096
    repeated = k > 1
    assert 0.47 < repeated.float().mean() < 0.53
    logs = k[repeated].log() / torch.log(torch.tensor(4096.0))  # uniform on [0, 1]
    assert abs(logs.mean().item() - 0.5) < 0.02 and abs((logs < 0.25).float().mean().item() - 0.25) < 0.02
    assert (sample_gate_repeats(100, 4096.0, 0.0, "cpu") == 1).all()


def test_eval_mode_and_inference_ignore_gate_repeats():
    ids = torch.randint(0, 300, (2, 80))
    plain = tiny_comet(seed=3)
    repeated = tiny_comet(seed=3, gate_repeat_max=4096.0, gate_repeat_prob=1.0)
    torch.testing.assert_close(repeated(input_ids=ids).logits, plain(input_ids=ids).logits)
    with torch.no_grad():
        stream = repeated.stream()
        torch.testing.assert_close(stream.feed(ids, logits="all"), plain(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_training_with_repeats_changes_the_loss_and_trains_the_gate():
    ids = torch.randint(0, 300, (2, 80))
    plain = tiny_comet(seed=4).train()
    repeated = tiny_comet(seed=4, gate_repeat_max=4096.0, gate_repeat_prob=1.0).train()
    torch.manual_seed(0)
    out = repeated(input_ids=ids, labels=ids)
    assert not torch.allclose(out.logits, plain(input_ids=ids, labels=ids).logits)
    out.loss.backward()
    gates = [nets.global_mem.gate.weight.grad for nets in repeated.memory_nets]
    assert all(g is not None and g.abs().sum() > 0 for g in gates)


@pytest.mark.parametrize("fields, text", [
    (dict(gate_repeat_max=0.5), "gate_repeat_max=0.5"),
    (dict(gate_repeat_max=True), "gate_repeat_max=True"),
    (dict(gate_repeat_prob=1.5), "gate_repeat_prob=1.5"),
    (dict(gate_repeat_max=64.0, global_gate="overwrite"), 'global_gate="overwrite"'),
])
def test_bad_gate_repeat_settings_name_the_field_and_the_fix(fields, text):
    with pytest.raises(CoMeTConfigError, match="Fix:") as err:
        CoMeTConfig(**fields)
    assert text in str(err.value)
