"""Give every rank of a pipeline group the batch of its first rank (only that rank's data is used)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def share_batch(batch, src: int, group, device: torch.device):
    """`batch` (a tensor, or a dict/list/tuple of tensors and plain values) as rank `src` of `group` has it."""
    leaves, spec = _flatten(batch)
    meta = [(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else ("obj", t) for t in leaves]
    holder = [(meta, spec)]
    dist.broadcast_object_list(holder, src=src, group=group, device=device)
    meta, spec = holder[0]
    out, mine = [], dist.get_rank() == src
    for leaf, m in zip(leaves if mine else [None] * len(meta), meta):
        if m[0] == "obj":
            out.append(m[1])
            continue
        t = leaf.to(device).contiguous() if mine else torch.empty(m[0], dtype=m[1], device=device)
        dist.broadcast(t, src=src, group=group)
        out.append(t)
    return _unflatten(out, spec)


def _flatten(obj):
    if isinstance(obj, dict):
        leaves, specs = [], []
        for k, v in obj.items():
            sub, spec = _flatten(v)
            leaves += sub
            specs.append((k, spec))
        return leaves, ("dict", specs)
    if isinstance(obj, (list, tuple)):
        leaves, specs = [], []
        for v in obj:
            sub, spec = _flatten(v)
            leaves += sub
            specs.append(spec)
        return leaves, ("tuple" if isinstance(obj, tuple) else "list", specs)
    return [obj], ("leaf", None)


def _unflatten(leaves, spec):
    it = iter(leaves)

    def build(s):
        kind, sub = s
        if kind == "leaf":
            return next(it)
        if kind == "dict":
            return {k: build(v) for k, v in sub}
        items = [build(v) for v in sub]
        return tuple(items) if kind == "tuple" else items

    return build(spec)
