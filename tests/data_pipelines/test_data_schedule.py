"""seq_len_schedule: a length curriculum decided by global sample position, identical after a resume."""

import pytest
import torch

from data_pipelines.errors import DataConfigError
from data_pipelines.factory import build_source
from data_pipelines.loader import RankBatches

SPEC = {"kind": "passkey", "seq_len": 256, "num_samples": 500, "seq_len_schedule": [[0, 128], [96, 192], [160, 256]]}


def test_lengths_follow_the_schedule_by_global_position_on_every_rank(tok):
    source = build_source(SPEC, tok)
    for rank in range(2):
        batches = RankBatches(source, batch_size=16, rank=rank, world_size=2, seed=3)
        # global batch 32: steps 0-2 cover positions 0-95, steps 3-4 96-159, then 256
        assert [batches.batch(step)["input_ids"].shape[1] for step in range(7)] == [128, 128, 128, 192, 192, 256, 256]
    assert source[0]["input_ids"].shape[0] == 256  # plain indexing: the final length
    assert len(source) == 500 and source.key(7) == build_source({**SPEC, "seq_len_schedule": None}, tok).key(7)


def test_a_resumed_loader_gives_the_batches_of_an_uninterrupted_run(tok):
    source = build_source(SPEC, tok)
    straight = RankBatches(source, batch_size=8, rank=1, world_size=2, seed=5)
    it = iter(straight)
    expected = [next(it) for _ in range(12)]
    resumed = RankBatches(source, batch_size=8, rank=1, world_size=2, seed=5, start_sample=7 * 16)
    it = iter(resumed)
    for want in expected[7:]:
        got = next(it)
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])


@pytest.mark.parametrize("schedule, needle", [
    ([[10, 128], [20, 256]], "must begin at 0"),
    ([[0, 128], [0, 256]], "must begin at 0 and increase"),
    ([[0, 128]], "end at seq_len"),
    ([[0, 512], [10, 256]], "must lie in [2, seq_len=256]"),
    ([[0, "128"], [10, 256]], "is not a [start, length] pair"),
    ("128", "must be a non-empty list"),
])
def test_bad_schedules_are_refused_before_any_sample_is_built(tok, schedule, needle):
    with pytest.raises(DataConfigError) as err:
        build_source({**SPEC, "seq_len_schedule": schedule}, tok)
    assert needle in str(err.value) and "Use e.g." in str(err.value)
