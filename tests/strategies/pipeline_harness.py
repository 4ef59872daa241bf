"""Helpers the pipeline tests run inside real gloo processes (spawned; importable by module name)."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models", "comet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_comet(family="qwen3", seed=0, **overrides):
    """The models' own tiny-model factory (tests/models/comet/conftest.py), loaded under its own name."""
    name = "pipeline_models_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(MODELS, "conftest.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].tiny_comet(family, seed, **overrides)


def sequence(n_tokens: int, seed: int = 3, batch: int = 1, vocab: int = 300):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, n_tokens), generator=g)
    labels = ids.clone()
    labels[:, : n_tokens // 5] = -100  # an unlabelled prompt: ranks see different token counts
    return ids, labels


def reference_grads(model, ids, labels, **kw):
    """Loss and every parameter gradient of a single-process run (token mean over the sequence)."""
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, **kw)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _entry(rank, world, port, fn, args, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # several processes share a few cores
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        fn(rank, world, *args)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout: float = 240.0) -> list[int]:
    """Run fn(rank, world, *args) in `world` gloo processes; re-raise the first failure (a failed assertion
    inside a worker) with its traceback. Returns the exit codes, all 0 when every rank's checks passed."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, errors)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    if not errors.empty():
        rank, tb = errors.get()
        raise AssertionError(f"rank {rank} failed:\n{tb}")
    if alive:
        raise AssertionError(f"ranks {[procs.index(p) for p in alive]} hung for {timeout}s (deadlock?)")
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise AssertionError(f"worker exit codes {bad}")
    return [p.exitcode for p in procs]
