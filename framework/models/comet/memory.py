"""CoMeT's two memories, per decoder layer: a gated global memory and a FIFO temporary memory.

Global path:    S' = RMSNorm(R)                              on the first chunk (or a new document)
                S' = g * S + (1 - g) * RMSNorm(R),  g = sigmoid(W_g [RMSNorm(R); S])   (one scalar per slot)
                S' = g^k * S + (1 - g^k) * RMSNorm(R)        in training with gate repeats k (the same
                                                             update applied k times; see CoMeTConfig)
                S' = RMSNorm(R)                              always, with global_gate="overwrite" (RMT-style ablation)
                G' = S' + W_up W_down S'                     (rank-r residual adapter)
Temporary path: entries = RLA_t(RMSNorm_t(C)), appended to a queue that keeps the newest
                `budget` real entries; padding entries are evicted first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, like the HF decoder norms."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class LowRankAdapter(nn.Module):
    """x + W_up(W_down(x)) with no biases (the paper's RLA)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


class GlobalMemory(nn.Module):
    """Gated global state and the memory injected from it."""

    def __init__(self, dim: int, rank: int, eps: float, gated: bool = True):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        # gated=False is the RMT-style ablation: every chunk overwrites the state
        self.gate = nn.Linear(2 * dim, 1, bias=False) if gated else None
        self.adapter = LowRankAdapter(dim, rank)

    def update(
        self, readouts: torch.Tensor, state: torch.Tensor | None, fresh: torch.Tensor | None = None,
        repeats: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (memory, state) after one chunk.

        readouts: (B, m, d) layer outputs at the readout tokens.
        state: (B, m, d) previous state, or None on the first chunk.
        fresh: (B,) bool; True restarts that sequence's state (first-chunk rule), e.g. at a new document.
        repeats: (B,) float >= 1; the gate becomes g**k (computed in log space), i.e. the state moves as if
            this chunk's update were applied k times with the same candidate.
        """
        candidate = self.norm(readouts)
        if state is None or self.gate is None:
            new_state = candidate
        else:
            logit = self.gate(torch.cat([candidate, state], dim=-1))
            if repeats is None:
                g = torch.sigmoid(logit)
            else:
                log_g = F.logsigmoid(logit.float()) * repeats.float()[:, None, None]
                g = log_g.exp().to(candidate.dtype)
            new_state = g * state + (1.0 - g) * candidate
            if fresh is not None:
                new_state = torch.where(fresh[:, None, None], candidate, new_state)
        return self.adapter(new_state), new_state


class TemporaryMemory(nn.Module):
    """Projects compression-token outputs into FIFO entries."""

    def __init__(self, dim: int, rank: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.adapter = LowRankAdapter(dim, rank)

    def entries(self, compressed: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.norm(compressed))


class LayerMemoryNets(nn.Module):
    """The new parameters of one decoder layer.

    read_gate (neutral start only): one scalar per attention head, starting at 0, that scales how much the layer's
    text rows read memory and compression rows (see attention.gated_read_attention).
    """

    def __init__(self, dim: int, rank: int, eps: float, temp_eps: float, use_global: bool, use_temp: bool,
                 gated: bool = True, read_heads: int = 0):
        super().__init__()
        self.global_mem = GlobalMemory(dim, rank, eps, gated) if use_global else None
        self.temp_mem = TemporaryMemory(dim, rank, temp_eps) if use_temp else None
        self.read_gate = nn.Parameter(torch.zeros(read_heads)) if read_heads else None


def fifo_select(old_valid: torch.Tensor, new_valid: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which entries of cat(old, new) the queue keeps, and whether each kept entry is real.

    Priority: real over padding, then newer over older. Kept entries stay in chronological order.
    old_valid: (B, K_old) bool; new_valid: (B, K_new) bool.
    Returns (index (B, K) long into the concatenation, valid (B, K) bool), K = min(budget, K_old + K_new).
    """
    valid = torch.cat([old_valid, new_valid], dim=1)
    total = valid.shape[1]
    keep = min(budget, total)
    age_rank = torch.arange(total, device=valid.device).expand_as(valid)
    score = valid.long() * total + age_rank  # real first, then newest
    chosen = score.topk(keep, dim=1).indices.sort(dim=1).values
    return chosen, valid.gather(1, chosen)


@dataclass
class LayerMemory:
    """One layer's memory between chunks. Any field is None while that path is empty."""

    memory: torch.Tensor | None = None  # (B, m, d) injected global memory
    state: torch.Tensor | None = None  # (B, m, d) gated state
    queue: torch.Tensor | None = None  # (B, K, d) temporary memory

    def rows(self) -> torch.Tensor | None:
        parts = [t for t in (self.memory, self.queue) if t is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@dataclass
class MemoryIndex:
    """What is known about the memory rows, shared by every layer (it depends on the input only).

    has_global: whether a global memory exists yet (after the first closed chunk).
    state_doc: (B,) document of the global state.
    queue_valid, queue_doc: (B, K) per queue entry.
    """

    has_global: bool = False
    state_doc: torch.Tensor | None = None
    queue_valid: torch.Tensor | None = None
    queue_doc: torch.Tensor | None = None

    def row_meta(self, m: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(valid, doc) for the memory rows [global | queue], each (B, M)."""
        valids, docs = [], []
        if self.has_global and m > 0:
            valids.append(torch.ones(batch, m, dtype=torch.bool, device=device))
            docs.append(self.state_doc[:, None].expand(batch, m))
        if self.queue_valid is not None:
            valids.append(self.queue_valid)
            docs.append(self.queue_doc)
        if not valids:
            empty = torch.zeros(batch, 0, dtype=torch.bool, device=device)
            return empty, empty.long()
        return torch.cat(valids, dim=1), torch.cat(docs, dim=1)
