"""A sequence-length schedule (a length curriculum) for the synthetic tasks.

``{"kind": "passkey", "seq_len": 256, "seq_len_schedule": [[0, 128], [12000, 256]]}`` gives the
samples at global positions 0..11999 (the order in which training consumes them, over all ranks)
128 tokens and every later one 256. The length is a function of the position alone, so a resumed
run, any rank and any loader worker see exactly the samples of an uninterrupted run.
``RankBatches`` asks for ``sample_at(position, index)``; plain indexing gives the final length.
Start positions should be multiples of the global batch size, so that no batch mixes lengths.
"""

from __future__ import annotations

import bisect
from typing import Callable, Sequence

from data_pipelines.errors import DataConfigError


def check_schedule(schedule, seq_len: int) -> list[tuple[int, int]]:
    fix = f"Use e.g. [[0, {max(2, seq_len // 2)}], [10000, {seq_len}]]: [start sample, length] pairs from 0 up."
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise DataConfigError(f"data spec seq_len_schedule={schedule!r} must be a non-empty list. {fix}")
    pairs = []
    for item in schedule:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            raise DataConfigError(f"data spec seq_len_schedule entry {item!r} is not a [start, length] pair of ints. {fix}")
        pairs.append((int(item[0]), int(item[1])))
    starts = [p[0] for p in pairs]
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise DataConfigError(f"data spec seq_len_schedule starts {starts} must begin at 0 and increase. {fix}")
    lengths = [p[1] for p in pairs]
    if lengths[-1] != seq_len or any(n < 2 or n > seq_len for n in lengths):
        raise DataConfigError(f"data spec seq_len_schedule lengths {lengths} must lie in [2, seq_len={seq_len}] and end "
                              f"at seq_len (the length that evaluation and plain indexing use). {fix}")
    return pairs


class LengthSchedule:
    """One source per length; sample ``position`` comes from the source its schedule entry names."""

    def __init__(self, build: Callable[[int], object], schedule: Sequence[tuple[int, int]]):
        self.starts = [start for start, _ in schedule]
        self.sources = [build(length) for _, length in schedule]
        self.final = self.sources[-1]

    def __len__(self) -> int:
        return len(self.final)

    def __getitem__(self, index: int):
        return self.final[index]

    def sample_at(self, position: int, index: int):
        return self.sources[bisect.bisect_right(self.starts, position) - 1][index]

    def __getattr__(self, name):  # key(), example(), seq_len ... of the final source
        if name in ("final", "sources", "starts"):
            raise AttributeError(name)
        return getattr(self.final, name)
