"""Helpers the pipeline tests run inside real gloo processes (spawned; importable by module name)."""

from __future__ import annotations

import faulthandler
import importlib.util
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import wait as wait_for

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


def _entry(rank, world, port, fn, args, errors, log_path, timeout, finished):
    # everything this rank writes, a C++ abort message or a faulthandler dump included, goes to its own log,
    # whose tail `spawn` reports when the rank dies
    log = open(log_path, "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    faulthandler.enable(file=log, all_threads=True)  # SIGABRT/SIGSEGV: every thread's Python stack
    faulthandler.register(signal.SIGUSR1, file=log, all_threads=True)  # a hung rank, before it is killed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # several processes share a few cores
    code = 1
    try:
        # collectives wait as long as the test may (a busy machine, not a deadlock, makes a rank late)
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout))
        fn(rank, world, *args)
        # no rank closes its connections (rank 0 also hosts the rendezvous store) while another still talks
        dist.barrier()
        code = 0
    except BaseException:
        errors.put((rank, traceback.format_exc()))
    finally:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except BaseException:
            errors.put((rank, "destroy_process_group:\n" + traceback.format_exc()))
            code = 1
        if code == 0:  # rank 0 hosts the store: it leaves once every rank has torn its process group down
            try:
                finished.wait(60)
            except threading.BrokenBarrierError:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        # the result is in (exit code, error queue): skip interpreter teardown, where torch's and gloo's
        # threads and objects are destroyed in no fixed order
        os._exit(code)


def _tail(path: str, n: int = 6000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


def spawn(fn, world: int, *args, timeout: float = 600.0) -> list[int]:
    """Run fn(rank, world, *args) in `world` gloo processes. A failure (a failed assertion inside a worker, a rank
    killed by a signal such as an abort in C++, a hang) is raised with every rank's exit code, traceback and the
    tail of its output (stdout, stderr and faulthandler stacks; the whole logs are kept). Returns the exit codes,
    all 0 when every rank's checks passed."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = free_port()
    logs = tempfile.mkdtemp(prefix="pipeline-ranks-")
    paths = [os.path.join(logs, f"rank{r}.log") for r in range(world)]
    finished = ctx.Barrier(world)
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, errors, paths[r], timeout, finished))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.is_alive() for p in procs):
        wait_for([p.sentinel for p in procs if p.is_alive()], timeout=1.0)
        if any(p.exitcode not in (None, 0) for p in procs):  # a rank failed: its peers would wait for it
            deadline = min(deadline, time.monotonic() + 30)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        _dump_stacks(p.pid)
    for p in alive:
        p.kill()
        p.join(10)

    failed = {}
    while not errors.empty():
        rank, tb = errors.get()
        failed.setdefault(rank, tb)
    codes = [p.exitcode for p in procs]
    hung = [procs.index(p) for p in alive]
    if failed or hung or any(codes):
        # causes first: a rank killed by a signal (an abort in C++), then a failed check; a peer's "Connection
        # closed by peer" is a consequence

        def cause(r):
            if codes[r] is not None and codes[r] < 0 and r not in hung:
                return 0
            return 1 if r in failed and "closed by peer" not in failed[r] else 2

        head = (f"ranks {hung} hung for {timeout}s (deadlock?)" if hung else
                f"worker exit codes {[c for c in codes if c]} (ranks {[r for r, c in enumerate(codes) if c]})")
        order = sorted(range(world), key=cause)
        parts = [f"{head}; exit codes by rank {codes}; logs in {logs}"]
        for r in order:
            if r in failed:
                parts.append(f"--- rank {r} failed:\n{failed[r]}")
            parts.append(f"--- rank {r} (exit code {codes[r]}), last output:\n{_tail(paths[r])}")
        raise AssertionError("\n".join(parts))
    shutil.rmtree(logs, ignore_errors=True)
    return [p.exitcode for p in procs]


def _dump_stacks(pid: int) -> None:
    """Ask a hung rank for its Python stacks (faulthandler, registered on SIGUSR1) before it is killed."""
    try:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
    except OSError:
        pass
