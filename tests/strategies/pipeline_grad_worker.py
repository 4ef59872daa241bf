"""What each process of the gradient-equality tests runs (imported by name in spawned processes)."""

from __future__ import annotations

import torch
from pipeline_harness import sequence, tiny_comet

TOL = 1e-5


def _reference(model, seqs, **kw):
    """One process: the token mean over every sequence, and every parameter gradient."""
    model.zero_grad()
    loss_sum, tokens = 0.0, 0
    for ids, labels in seqs:
        out = model(input_ids=ids, labels=labels, **kw)
        loss_sum, tokens = loss_sum + out.loss_sum, tokens + out.num_tokens
    loss = loss_sum / tokens
    loss.backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    model.zero_grad()
    return loss.item(), grads


def _pipelined(model, mesh, seqs, schedule, **kw):
    from framework.methods.lm_module import global_token_mean
    from framework.strategies.layer_pipeline import all_reduce_mean
    from framework.strategies.p2p import PeerLink
    from framework.strategies.wavefront import pipeline_forward

    ids, labels = seqs[mesh.data_rank]
    link = PeerLink(mesh.prev_rank, mesh.next_rank, mesh.pipeline_group)
    out = pipeline_forward(model, link, mesh.pipeline_rank, mesh.pipeline_size, input_ids=ids, labels=labels,
                           schedule=schedule, **kw)
    loss, mean, _, _ = global_token_mean(out.loss_sum, out.num_tokens, mesh.world_size, ids.numel())
    loss.backward()
    all_reduce_mean(model.parameters())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return mean.item(), grads


def _compare(label, ref, got):
    ref_loss, ref_grads = ref
    loss, grads = got
    assert abs(loss - ref_loss) <= TOL * max(1.0, abs(ref_loss)), f"{label}: loss {loss} vs {ref_loss}"
    for name, g in ref_grads.items():
        diff = (grads[name] - g).abs().max().item()
        assert diff <= TOL, f"{label}: gradient of {name} differs by {diff:.3g}"


def check(mesh, model, seqs, schedule="wavefront", label="", **kw):
    _compare(f"{label} P={mesh.pipeline_size} D={mesh.data_size} {schedule}",
             _reference(model, seqs[:mesh.data_size], **kw), _pipelined(model, mesh, seqs, schedule, **kw))


def two_ranks(rank, world):
    from framework.strategies.mesh import PipelineMesh

    mesh = PipelineMesh.build(2)
    model = tiny_comet("qwen3").train()
    seqs = [sequence(4 * 16, seed=3)]
    check(mesh, model, seqs, "wavefront")
    check(mesh, model, seqs, "naive")
    # 2 chunks (one per rank: the first rank never uses the memory gate), and a partial last chunk
    check(mesh, model, [sequence(2 * 16 - 5, seed=4)], label="short")
    # a batch of 2 with padding inside, documents packed in one row, gradient checkpointing, llama
    model = tiny_comet("llama", reset_memory_at_doc_boundaries=True, gradient_checkpointing=True).train()
    ids, labels = sequence(4 * 16, seed=5, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 20:26] = 0
    docs = torch.zeros_like(ids)
    docs[:, 37:] = 1
    check(mesh, model, [(ids, labels)], label="batch+padding+docs+ckpt", attention_mask=mask, document_ids=docs)


def four_ranks(rank, world):
    from framework.strategies.mesh import PipelineMesh

    model = tiny_comet("qwen3").train()
    seqs = [sequence(8 * 16, seed=6), sequence(8 * 16, seed=7)]
    check(PipelineMesh.build(4), model, seqs)  # one pipeline of 4
    check(PipelineMesh.build(2), model, seqs)  # 2 pipelines x 2 data replicas, one sequence each
