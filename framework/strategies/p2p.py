"""Autograd-aware point-to-point transfer of one layer's memory between neighbouring pipeline ranks.

Forward: the sender posts asynchronous sends and returns a zero "token" that the caller adds to its
loss; the receiver pre-posts asynchronous receives a few layers ahead and returns tensors that require
grad. Backward runs the reverse wavefront: the receiver's backward sends d(loss)/d(memory) back
(asynchronously, drained at the end of the backward pass) and the sender's backward receives it.
The token keeps the memory that a rank only sends connected to its loss, so backward always reaches
the send and the peer never waits forever.

A layer's memory is a list of optional tensors (global memory, gate state, temporary queue). Their
shapes and dtypes travel once per forward in a small header; every layer must match it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd import Variable

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MAX_FIELDS = 4
NDIM = 3
HEADER_TAG = 1 << 20


def _tag(layer: int, field: int, backward: bool) -> int:
    return layer * 2 * MAX_FIELDS + (MAX_FIELDS if backward else 0) + field


def _encode(tensors, device) -> torch.Tensor:
    rows = []
    for t in tensors:
        if t is None:
            rows.append([0] * (2 + NDIM))
            continue
        if t.dim() != NDIM or t.dtype not in DTYPES:
            raise TypeError(f"pipeline memory must be {NDIM}-D of {DTYPES}; got {tuple(t.shape)} {t.dtype}")
        rows.append([1, DTYPES.index(t.dtype), *t.shape])
    return torch.tensor(rows, dtype=torch.long, device=device)


def _decode(header: torch.Tensor) -> list:
    meta = []
    for row in header.tolist():
        meta.append(None if not row[0] else (tuple(row[2:]), DTYPES[row[1]]))
    return meta


class PeerLink:
    """Transfers of one pipeline rank with its neighbours, for one forward/backward at a time.

    prev / next: global ranks of the neighbours (None at the ends). prefetch: how many layers ahead
    the receiver posts its receives (overlap of transfer and compute)."""

    def __init__(self, prev: int | None, next: int | None, group=None, device=None, n_fields: int = 3,
                 prefetch: int = 2):
        if n_fields > MAX_FIELDS:
            raise ValueError(f"at most {MAX_FIELDS} memory tensors per layer")
        self.prev, self.next, self.group = prev, next, group
        self.device = torch.device(device or "cpu")
        self.n_fields, self.prefetch = n_fields, max(1, prefetch)
        self.reset(0)

    # ------------------------------------------------------------------ per forward
    def reset(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self._sent_meta = None  # header this rank sent
        self._recv_meta = None  # header received from prev
        self._posted = {}  # layer -> (buffers, works)
        self._fwd_works = []
        self._bwd_works = []
        self._drain_queued = False
        self._taken = 0

    def finish_forward(self) -> None:
        """Wait for this forward's sends (their buffers must stay intact until delivered)."""
        for work, _ in self._fwd_works:
            work.wait()
        self._fwd_works = []

    # ------------------------------------------------------------------ forward transfers
    def _post_send(self, layer: int, tensors) -> None:
        if self._sent_meta is None:
            header = _encode(tensors, self.device)
            dist.send(header, self.next, group=self.group, tag=HEADER_TAG)
            self._sent_meta = _decode(header)
        meta = [None if t is None else (tuple(t.shape), t.dtype) for t in tensors]
        if meta != self._sent_meta:
            raise RuntimeError(f"layer {layer} memory {meta} differs from the first layer's {self._sent_meta}: "
                               "the pipeline needs every layer's memory to have one shape and dtype")
        for i, t in enumerate(tensors):
            if t is not None:
                buf = t.detach().contiguous()
                self._fwd_works.append((dist.isend(buf, self.next, group=self.group, tag=_tag(layer, i, False)), buf))

    def _ensure_posted(self, upto: int) -> None:
        if self._recv_meta is None:
            header = torch.empty(self.n_fields, 2 + NDIM, dtype=torch.long, device=self.device)
            dist.recv(header, self.prev, group=self.group, tag=HEADER_TAG)
            self._recv_meta = _decode(header)
        for layer in range(min(upto, self.n_layers - 1) + 1):
            if layer in self._posted or layer < self._taken:
                continue
            bufs, works = [], []
            for i, m in enumerate(self._recv_meta):
                if m is None:
                    bufs.append(None)
                    continue
                buf = torch.empty(m[0], dtype=m[1], device=self.device)
                works.append(dist.irecv(buf, self.prev, group=self.group, tag=_tag(layer, i, False)))
                bufs.append(buf)
            self._posted[layer] = (bufs, works)

    def _take(self, layer: int) -> list:
        self._ensure_posted(layer + self.prefetch)
        bufs, works = self._posted.pop(layer)
        self._taken = layer + 1
        for w in works:
            w.wait()
        return bufs

    # ------------------------------------------------------------------ backward transfers
    def _recv_grads(self, layer: int, fields) -> list:
        """Blocking receive of the gradients of the sent fields [(index, shape, dtype)], in field order."""
        grads = []
        for i, shape, dtype in fields:
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            dist.recv(buf, self.next, group=self.group, tag=_tag(layer, i, True))
            grads.append(buf)
        return grads

    def _send_grads(self, layer: int, grads) -> None:
        for i, g in enumerate(grads):
            if g is not None:
                buf = g.contiguous()
                self._bwd_works.append((dist.isend(buf, self.prev, group=self.group, tag=_tag(layer, i, True)), buf))
        if not self._drain_queued:  # wait for these sends once the whole backward pass is done
            Variable._execution_engine.queue_callback(self._drain_backward)
            self._drain_queued = True

    def _drain_backward(self) -> None:
        for work, _ in self._bwd_works:
            work.wait()
        self._bwd_works = []
        self._drain_queued = False

    # ------------------------------------------------------------------ public, autograd-aware
    def send(self, layer: int, tensors) -> torch.Tensor:
        """Send layer `layer`'s memory to the next rank; returns a zero scalar to add to the loss."""
        present = [t for t in tensors if t is not None]
        if not present:
            raise ValueError("nothing to send: the layer memory is empty")
        mask = tuple(t is not None for t in tensors)
        return _SendMemory.apply(self, layer, mask, *present)

    def recv(self, layer: int) -> list:
        """Receive layer `layer`'s memory from the previous rank (None for absent fields)."""
        anchor = torch.zeros((), device=self.device, requires_grad=torch.is_grad_enabled())
        out = _RecvMemory.apply(self, layer, anchor)
        it = iter(out)
        return [None if m is None else next(it) for m in self._recv_meta]


class _SendMemory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, link: PeerLink, layer: int, mask, *present):
        it = iter(present)
        link._post_send(layer, [next(it) if m else None for m in mask])
        ctx.link, ctx.layer = link, layer
        index = [i for i, m in enumerate(mask) if m]
        ctx.fields = [(i, tuple(t.shape), t.dtype) for i, t in zip(index, present)]
        return present[0].new_zeros(())

    @staticmethod
    def backward(ctx, _token_grad):
        grads = ctx.link._recv_grads(ctx.layer, ctx.fields)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[3:])]
        return (None, None, None, *grads)


class _RecvMemory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, link: PeerLink, layer: int, anchor):
        ctx.link, ctx.layer = link, layer
        bufs = link._take(layer)
        ctx.fields = [i for i, b in enumerate(bufs) if b is not None]
        return tuple(b for b in bufs if b is not None)

    @staticmethod
    def backward(ctx, *grads):
        full = [None] * ctx.link.n_fields
        for i, g in zip(ctx.fields, grads):
            full[i] = g
        ctx.link._send_grads(ctx.layer, full)
        return None, None, None
