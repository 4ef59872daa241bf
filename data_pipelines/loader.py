"""Deterministic, resumable, reshardable batches over a map-style source.

The global sample order is fixed by ``(seed, len(source))``: position ``p`` of the endless
stream is sample ``perm_e[p % n]`` of epoch ``e = p // n``, where ``perm_e`` is a seeded
permutation (identity when ``shuffle=False``). Training consumes the stream in global steps
of ``batch_size * world_size`` positions; step ``s`` on rank ``r`` takes positions

    cursor + s*B*W + r*B  ...  cursor + s*B*W + r*B + B - 1

The resume state is therefore one integer, the global position of the next unconsumed
sample (``samples_consumed``), plus the seed. It does not depend on the rank count or the
number of loader workers:

- the same ``B*W`` after a resume gives exactly the batches an uninterrupted run would have
  seen, whatever ``W`` is (2 ranks of B=4 == 1 rank of B=8, sample for sample);
- a different ``B*W`` still continues the same global sample sequence, only grouped into
  different batches.

Under ``DataLoader(ds, batch_size=None, num_workers=k)``, worker ``w`` builds only steps with
``s % k == w``; DataLoader's round-robin over workers then reproduces the order exactly.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.errors import DataConfigError, require


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch: a pure function of (n, seed, epoch)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), int(epoch), 0x5EED]))
    return rng.permutation(n).astype(np.int64)


def collate(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors key by key; numbers become a tensor; anything else a list."""
    first = samples[0]
    out: dict[str, Any] = {}
    for key in first:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float, bool, np.integer, np.floating)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class GlobalOrder:
    """Maps global stream positions to source indices, keeping the last epochs' permutations."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perms: dict[int, np.ndarray] = {}

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            perm = self._perms[epoch] = epoch_permutation(self.n, self.seed, epoch, self.shuffle)
        return int(perm[offset])


class RankBatches(IterableDataset):
    """Endless, already-collated batches for one rank; see the module docstring for the order.

    ``state_dict()`` is ``{"samples_consumed": int, "seed": int}``. Batches yielded by an
    iterator in *this* process advance it (``num_workers=0``). With loader worker
    processes, wrap the dataset in :class:`RankBatchLoader` (it counts the batches it hands
    out), or call :meth:`set_steps_consumed` with the training step count.
    """

    def __init__(self, source, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, start_sample: int = 0):
        require(isinstance(batch_size, int) and batch_size > 0, f"batch_size={batch_size!r} must be a positive int. Pass e.g. batch_size=1.")
        require(isinstance(world_size, int) and world_size > 0, f"world_size={world_size!r} must be a positive int (the number of ranks).")
        require(
            isinstance(rank, int) and 0 <= rank < world_size,
            f"rank={rank!r} must be an int in [0, world_size={world_size}). Take it from the Ray Train context (get_world_rank()).",
        )
        require(isinstance(start_sample, int) and start_sample >= 0, f"start_sample={start_sample!r} must be a non-negative int.")
        n = len(source)
        require(n > 0, "the source is empty (len(source) == 0): there is nothing to sample. Check the data spec.")
        self.source = source
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.start_sample = start_sample
        self._cursor = start_sample  # global position of the next unconsumed sample

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def positions(self, step: int, cursor: int | None = None) -> range:
        """Global positions of this rank's batch at ``step`` steps after ``cursor`` (default: now)."""
        base = (self._cursor if cursor is None else cursor) + step * self.global_batch_size + self.rank * self.batch_size
        return range(base, base + self.batch_size)

    def batch(self, step: int, cursor: int | None = None, order: GlobalOrder | None = None) -> dict[str, Any]:
        order = order or GlobalOrder(len(self.source), self.seed, self.shuffle)
        at = getattr(self.source, "sample_at", None)  # sources whose samples depend on the position too
        if at is not None:
            return collate([at(p, order.index(p)) for p in self.positions(step, cursor)])
        return collate([self.source[order.index(p)] for p in self.positions(step, cursor)])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        cursor = self._cursor
        order = GlobalOrder(len(self.source), self.seed, self.shuffle)
        step = worker
        in_main_process = info is None
        while True:
            batch = self.batch(step, cursor, order)
            if in_main_process:
                # Count the batch as consumed once the caller asks for the next one or holds it.
                self._cursor = cursor + (step + 1) * self.global_batch_size
            yield batch
            step += workers

    # -- state -------------------------------------------------------------------------------
    @property
    def samples_consumed(self) -> int:
        return self._cursor

    def set_steps_consumed(self, steps: int) -> None:
        """Set the cursor to ``steps`` global steps after ``start_sample`` (for callers that count steps)."""
        self._cursor = self.start_sample + int(steps) * self.global_batch_size

    def state_dict(self) -> dict[str, int]:
        return {"samples_consumed": int(self._cursor), "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        try:
            consumed, seed = int(state["samples_consumed"]), int(state["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataConfigError(
                f"loader state {dict(state)!r} is invalid ({exc}): it must be {{'samples_consumed': int, 'seed': int}} "
                "as written by RankBatches.state_dict()."
            ) from None
        if seed != self.seed:
            raise DataConfigError(
                f"loader state has seed={seed} but this loader was built with seed={self.seed}: resuming would replay "
                f"a different sample order. Build the loader with seed={seed}, or start fresh without the state."
            )
        if consumed < 0:
            raise DataConfigError(f"loader state samples_consumed={consumed} must be >= 0.")
        self._cursor = consumed


class RankBatchLoader(DataLoader):
    """``DataLoader(RankBatches, batch_size=None)`` that tracks consumption and is itself stateful.

    Batches are counted when handed out in the main process, so prefetching by workers does
    not advance the state. ``state_dict``/``load_state_dict`` delegate to the dataset, which
    makes this loader a stateful one for Lightning's checkpointing too.
    """

    def __init__(self, dataset: RankBatches, num_workers: int = 0, **kwargs):
        require(isinstance(dataset, RankBatches), "RankBatchLoader needs a RankBatches dataset.")
        require(
            not kwargs.get("persistent_workers", False),
            "persistent_workers=True would keep workers on a stale cursor after load_state_dict; leave it False.",
        )
        kwargs.pop("batch_size", None)
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)

    def __iter__(self):
        ds: RankBatches = self.dataset  # type: ignore[assignment]
        start = ds._cursor
        for step, batch in enumerate(super().__iter__()):
            ds._cursor = start + (step + 1) * ds.global_batch_size
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self.dataset.state_dict()  # type: ignore[union-attr]

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.dataset.load_state_dict(state)  # type: ignore[union-attr]
