"""CoMeT's layer pipeline (wavefront) against naive chunk-level context parallelism, on P real processes.

Prints one JSON object. Example:

    python benchmarks/pipeline.py --ranks 2 --layers 8 --chunks 8 --family qwen3

Each rank holds a full copy of a random CoMeT model of the family and C/P chunks of one sequence.
Per training step (forward + backward, fp32) it measures the wall time of the wavefront schedule and of
the naive one (rank r starts only after rank r-1's whole forward; backward likewise), interleaved and
in the same processes; the step time of a schedule is the slowest rank's. It also checks the
gradients against one process running the whole sequence.

Memory: on CUDA, torch.cuda.max_memory_allocated during a step minus the memory before it (weights and
gradients excluded); on CPU, the bytes autograd saves for backward (activations, the bulk of a training
step's memory). `peak_mem_single_mb` is the same figure for one process running the whole sequence.
Backends: gloo on CPU, nccl on CUDA (one GPU per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def build_model(family: str, layers: int, hidden: int, chunk: int, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    heads = max(2, hidden // 64)
    arch = dict(vocab_size=1024, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=1 << 20)
    if family == "qwen3":
        arch["head_dim"] = hidden // heads
    cfg = AutoConfig.for_model(family, **arch)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(cfg)
    comet = CoMeTConfig(chunk_size=chunk, global_mem_size=max(4, chunk // 8), temp_stride=8,
                        temp_budget=max(8, chunk // 2))
    torch.manual_seed(seed + 1)
    return CoMeTForCausalLM.from_base(base, comet).train()


class SavedBytes:
    """Bytes of distinct storages autograd saves for backward while active (CPU activation memory)."""

    def __init__(self):
        import torch

        self.seen, self.total = set(), 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)

    def _pack(self, t):
        try:
            key = t.untyped_storage().data_ptr()
            if key not in self.seen:
                self.seen.add(key)
                self.total += t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def _measure(device, fn):
    """(result, memory MB) of fn() under the memory measure of the device."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with SavedBytes() as saved:
        out = fn()
    return out, saved.total / 2**20


def worker(rank, world, args, port, queue):
    import torch
    import torch.distributed as dist

    sys.path.insert(0, ROOT)
    from framework.methods.lm_module import global_token_mean
    from framework.strategies.layer_pipeline import all_reduce_mean
    from framework.strategies.mesh import PipelineMesh
    from framework.strategies.p2p import PeerLink
    from framework.strategies.wavefront import pipeline_forward

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        model = build_model(args.family, args.layers, args.hidden, args.chunk_size).to(device)
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(0, 1024, (1, args.chunks * args.chunk_size), generator=g).to(device)
        labels = ids.clone()

        single_mem, ref = 0.0, None
        if rank == 0:  # one process, whole sequence
            def single():
                out = model(input_ids=ids, labels=labels, return_logits=False)
                return out

            out, single_mem = _measure(device, single)
            out.loss.backward()
            ref = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
            del out
            model.zero_grad(set_to_none=True)

        mesh = PipelineMesh.build(world)
        link = PeerLink(mesh.prev_rank, mesh.next_rank, mesh.pipeline_group, device=device)

        def step(schedule):
            out = pipeline_forward(model, link, mesh.pipeline_rank, world, input_ids=ids, labels=labels,
                                   return_logits=False, schedule=schedule)
            loss, *_ = global_token_mean(out.loss_sum, out.num_tokens, world, ids.numel())
            loss.backward()
            return loss

        def timed(schedule):
            dist.barrier()
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            step(schedule)
            if cuda:
                torch.cuda.synchronize(device)
            dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the step ends when the slowest rank ends
            model.zero_grad(set_to_none=True)
            return dt.item()

        # gradients (and the memory of one pipelined step)
        def forward_only():
            return pipeline_forward(model, link, mesh.pipeline_rank, world, input_ids=ids, labels=labels,
                                    return_logits=False)

        out, rank_mem = _measure(device, forward_only)
        loss, *_ = global_token_mean(out.loss_sum, out.num_tokens, world, ids.numel())
        loss.backward()
        del out, loss
        all_reduce_mean(model.parameters())
        grads = [p.grad.detach().clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        mem = torch.tensor([rank_mem], dtype=torch.float64, device=device)
        dist.all_reduce(mem, op=dist.ReduceOp.MAX)

        for schedule in ("wavefront", "naive"):  # warm-up
            timed(schedule)
        times = {"wavefront": [], "naive": []}
        for _ in range(args.repeats):
            for schedule in ("wavefront", "naive"):
                times[schedule].append(timed(schedule))
        if rank == 0:
            diff = max((a - b).abs().max().item() for a, b in zip(grads, ref))
            wave, naive = statistics.median(times["wavefront"]), statistics.median(times["naive"])
            ideal = world * args.layers / (args.layers + world - 1)
            queue.put({
                "ranks": world, "layers": args.layers, "chunks": args.chunks, "family": args.family,
                "hidden": args.hidden, "chunk_size": args.chunk_size, "tokens": ids.numel(),
                "backend": "nccl" if cuda else "gloo", "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                "threads_per_rank": args.threads, "cpu_count": os.cpu_count(),
                "grad_max_abs_diff": diff,
                "step_s_wavefront": wave, "step_s_naive": naive,
                "speedup_vs_naive": naive / wave, "ideal_speedup": ideal,
                "speedup_fraction_of_ideal": naive / wave / ideal,
                "peak_mem_per_rank_mb": mem.item(), "peak_mem_single_mb": single_mem,
                "mem_ratio_per_rank_to_single": mem.item() / max(single_mem, 1e-9),
                "mem_target_ratio": 1.1 / world,
                "mem_measure": "cuda max_memory_allocated above weights and grads" if cuda
                else "bytes saved for backward (activations)",
            })
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2, help="pipeline ranks P (processes)")
    p.add_argument("--layers", type=int, default=8, help="decoder layers L")
    p.add_argument("--chunks", type=int, default=8, help="chunks C of the sequence (a multiple of P)")
    p.add_argument("--family", choices=FAMILIES, default="qwen3")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per schedule (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank on CPU")
    p.add_argument("--cpu", action="store_true", help="gloo on CPU even when CUDA is available")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from framework.strategies.mesh import PipelineConfigError, check_chunks

    try:
        check_chunks(args.chunks, args.ranks)
    except PipelineConfigError as err:
        p.error(str(err))
    import torch
    import torch.multiprocessing as mp

    if torch.cuda.is_available() and not args.cpu and torch.cuda.device_count() < args.ranks:
        p.error(f"--ranks {args.ranks} needs {args.ranks} GPUs with nccl; {torch.cuda.device_count()} visible. "
                "Fix: fewer ranks, or --cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=worker, args=(r, args.ranks, args, port, queue)) for r in range(args.ranks)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs) or queue.empty():
        print(json.dumps({"error": f"worker exit codes {[proc.exitcode for proc in procs]}"}))
        return 1
    from framework.eval.reporting import machine_info

    result = queue.get()
    result["machine"] = {**machine_info(result["device"]), "threads": result["threads_per_rank"]}  # per rank
    result["command"] = "python benchmarks/pipeline.py " + " ".join(sys.argv[1:])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
