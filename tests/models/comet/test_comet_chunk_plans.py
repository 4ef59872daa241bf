"""A chunk plan (chunk_ids, the paper's random chunking) runs each planned chunk as one chunk."""

import copy

import pytest
import torch

from framework.models.comet.layout import chunk_plan_layout

from conftest import VOCAB, tiny_comet


def _ids(sizes, batch=1):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).expand(batch, -1)


def _with_chunk_size(model, chunk_size):
    other = copy.deepcopy(model)
    other.config.chunk_size = chunk_size
    return other


def test_a_plan_of_short_chunks_equals_a_model_with_that_chunk_size():
    torch.manual_seed(0)
    model = tiny_comet(chunk_size=16)  # the weights do not depend on chunk_size
    ids = torch.randint(0, VOCAB, (2, 40))
    labels = ids.clone()
    planned = model(input_ids=ids, labels=labels, chunk_ids=_ids([8] * 5, batch=2))
    small = _with_chunk_size(model, 8)(input_ids=ids, labels=labels)
    torch.testing.assert_close(planned.logits, small.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(planned.loss, small.loss, atol=1e-6, rtol=1e-5)
    assert planned.num_tokens == small.num_tokens == 2 * 39  # no target is lost at a planned boundary


def test_a_fixed_plan_changes_nothing():
    model = tiny_comet(chunk_size=16)
    ids = torch.randint(0, VOCAB, (2, 40))
    plain = model(input_ids=ids, labels=ids)
    planned = model(input_ids=ids, labels=ids, chunk_ids=_ids([16, 16, 8], batch=2))
    torch.testing.assert_close(planned.logits, plain.logits)
    torch.testing.assert_close(planned.loss, plain.loss)


def test_uneven_plans_per_row_match_each_row_run_alone():
    model = tiny_comet(chunk_size=16)
    ids = torch.randint(0, VOCAB, (2, 36))
    rows = [_ids([5, 16, 3, 12]), _ids([16, 10, 10])]
    both = model(input_ids=ids, labels=ids, chunk_ids=torch.cat(rows))
    for b, plan in enumerate(rows):
        alone = model(input_ids=ids[b:b + 1], labels=ids[b:b + 1], chunk_ids=plan)
        torch.testing.assert_close(both.logits[b:b + 1], alone.logits, atol=1e-5, rtol=1e-4)
    # the first planned chunk of row 0 is 5 tokens long: its tokens see no memory and match a 5-token chunk
    first = _with_chunk_size(model, 5)(input_ids=ids[:1, :5])
    torch.testing.assert_close(both.logits[:1, :5], first.logits, atol=1e-5, rtol=1e-4)


def test_gradients_flow_through_a_plan():
    model = tiny_comet(chunk_size=16).train()
    ids = torch.randint(0, VOCAB, (1, 48))
    model(input_ids=ids, labels=ids, chunk_ids=_ids([4, 12, 16, 6, 10])).loss.backward()
    gate = model.memory_nets[0].global_mem.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[1, 1, 2, 2]]), "start at 0"),
    (torch.tensor([[0, 0, 2, 2]]), "grow by 0 or 1"),
    (torch.tensor([[0] * 5]), "more than the model's chunk_size=4"),
])
def test_a_bad_plan_is_refused_with_the_fix(bad, message):
    with pytest.raises(ValueError, match=message):
        chunk_plan_layout(bad, 4)


def test_a_plan_of_the_wrong_shape_is_refused():
    model = tiny_comet(chunk_size=16)
    with pytest.raises(ValueError, match="must match the input"):
        model(input_ids=torch.zeros(1, 20, dtype=torch.long), chunk_ids=_ids([10, 10, 5]))
