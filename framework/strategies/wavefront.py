"""The pipelined forward of a CoMeT model: one sequence's chunks split over the ranks of a pipeline group.

Rank r of P owns chunks [r*C/P, (r+1)*C/P). For each layer l it receives the layer-l memory from rank
r-1, runs layer l over its chunks (layer-major) and sends the result to rank r+1, so rank r runs layer l
at step l + r (a diagonal wavefront; L + P - 1 steps instead of P * L). Backward runs the reverse
wavefront through the autograd-aware transfers of `p2p.PeerLink`.

schedule="naive" is chunk-level context parallelism without the wavefront (rank r waits for rank r-1's
whole forward); it computes the same function and exists for the benchmark.
"""

from __future__ import annotations

import torch

from framework.models.comet.memory import LayerMemory
from framework.models.comet.modeling import CoMeTForCausalLM, CoMeTOutput

from .mesh import check_chunks
from .p2p import PeerLink

SCHEDULES = ("wavefront", "naive")


def _fields(mem: LayerMemory) -> list:
    return [mem.memory, mem.state, mem.queue]


def pipeline_forward(model: CoMeTForCausalLM, link: PeerLink, pipeline_rank: int, pipeline_size: int,
                     input_ids=None, labels=None, attention_mask=None, document_ids=None, inputs_embeds=None,
                     return_logits: bool = True, schedule: str = "wavefront", **_ignored) -> CoMeTOutput:
    """This rank's part of the forward. Every rank of the pipeline group passes the same whole sequence.

    Returns loss_sum and num_tokens over this rank's chunks only (reduce them over the world for the
    global token mean; `framework.methods.lm_module.global_token_mean` does), logits of this rank's chunks,
    and the memory after this rank's last chunk. loss_sum carries a zero term that keeps the memory this
    rank only sends in the graph: backpropagate through loss_sum (or anything built from it)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: use one of {SCHEDULES}")
    plans, targets = model.plan_sequence(input_ids, labels, attention_mask, document_ids, inputs_embeds)
    per = check_chunks(len(plans), pipeline_size, model.config.chunk_size)
    mine = plans[pipeline_rank * per:(pipeline_rank + 1) * per]
    n_layers = len(model.layers)
    first, last = pipeline_rank == 0, pipeline_rank == pipeline_size - 1
    link.reset(n_layers)

    xs = model.embed_block(mine, input_ids, inputs_embeds)
    tokens, memory, outgoing = [], [], []
    incoming = [None] * n_layers
    if schedule == "naive" and not first:
        incoming = [LayerMemory(*link.recv(layer)) for layer in range(n_layers)]
    for layer in range(n_layers):
        if first:
            mem = LayerMemory()
        else:
            mem = incoming[layer] or LayerMemory(*link.recv(layer))
        xs, mem = model.layer_block(layer, xs, mem, mine)
        memory.append(mem)
        if not last:
            if schedule == "naive":
                outgoing.append(mem)
            else:
                tokens.append(link.send(layer, _fields(mem)))
    for layer, mem in enumerate(outgoing):
        tokens.append(link.send(layer, _fields(mem)))
    link.finish_forward()

    loss_sum, num_tokens, logits = model.head_block(xs, mine, targets, return_logits)
    out = CoMeTOutput(logits=logits, memory=memory)
    if loss_sum is not None:
        if tokens:
            loss_sum = loss_sum + torch.stack(tokens).sum().to(loss_sum.dtype)
        out.loss_sum, out.num_tokens = loss_sum, num_tokens
        out.loss = loss_sum / num_tokens.clamp(min=1)  # this rank's chunks only
    return out


class PipelinedForward:
    """Replaces `model.forward` on one rank so that calling the model runs its part of the pipeline.

    The state dict and parameters are untouched (checkpoints stay interchangeable with a plain run);
    `uninstall` restores the model's own forward."""

    def __init__(self, model: CoMeTForCausalLM, link: PeerLink, pipeline_rank: int, pipeline_size: int,
                 schedule: str = "wavefront"):
        self.model, self.link = model, link
        self.pipeline_rank, self.pipeline_size, self.schedule = pipeline_rank, pipeline_size, schedule

    def __call__(self, *args, **kwargs) -> CoMeTOutput:
        if args:
            raise TypeError("the pipelined CoMeT forward takes keyword arguments only (input_ids=..., labels=...)")
        kwargs.setdefault("schedule", self.schedule)
        if kwargs["schedule"] in ("layer_major", "chunk_major"):
            kwargs["schedule"] = self.schedule
        return pipeline_forward(self.model, self.link, self.pipeline_rank, self.pipeline_size, **kwargs)

    def install(self) -> "PipelinedForward":
        self.model.forward = self
        return self

    def uninstall(self) -> None:
        if self.model.__dict__.get("forward") is self:
            del self.model.__dict__["forward"]
