"""CoMeT hyper-parameters, validated when the config is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class CoMeTConfigError(ValueError):
    """A CoMeT config field breaks a rule; the message names the field, the rule and a fix."""


GATE_MODES = ("learned", "overwrite")


@dataclass
class CoMeTConfig:
    """How CoMeT turns a causal LM into a chunk-recurrent model.

    chunk_size: text tokens per chunk. Attention never crosses a chunk boundary.
    global_mem_size: slots of gated global memory (and readout tokens per chunk); 0 disables the path.
    temp_stride: one compression token after every `temp_stride` text tokens; -1 disables the
        temporary (FIFO) path.
    temp_budget: most entries the FIFO queue keeps per layer.
    adapter_rank: rank of the low-rank residual adapters (RLA) on both memory paths.
    temp_norm_eps: epsilon of the temporary path's RMSNorm (the reference uses 1e-12).
    global_gate: "learned" (the paper's gated update) or "overwrite" (the RMT-style ablation: each
        chunk's readouts replace the global state).
    reset_memory_at_doc_boundaries: with `document_ids`, no memory or attention crosses documents.
    gradient_checkpointing: recompute each (layer, chunk) cell in backward.
    gate_repeat_max: training only (ignored in eval mode and at inference). Above 1, each chunk's gated
        update of a training sample counts, with probability gate_repeat_prob, as k identical updates,
        k drawn log-uniformly from [1, gate_repeat_max]: the gate g becomes g**k. A short training
        sample then also teaches the gate to hold a slot over as many updates as a long context has
        (g**k has gradient where k(1-g) is of order 1) and shows the reader states that have seen
        many updates. 1 (the default, and the paper) turns it off.
    gate_repeat_prob: the chance that a chunk's update is repeated, when gate_repeat_max > 1.
    neutral_start: True (the default) makes the untrained wrapper read text exactly as the base model reads a
        window of chunk_size tokens: text rows attend to memory and compression rows only through a per-layer,
        per-head read gate that starts at 0 (out = text-only attention + gate x (full attention - text-only
        attention)), compression rows share the position of their group's last text token (so text positions
        stay contiguous), and the adapters' up-projections start at 0. False is the paper's and the reference
        code's formulation (every row sees every earlier row, every row advances the position), for models
        trained from scratch and for the equivalence tests. Compression and readout rows always use full
        attention, so memory is written the same way in both.
    read_gate_scale: with neutral_start, the read gate of a head is read_gate_scale x its parameter (which starts
        at 0). Adam moves a parameter by about the learning rate per step whatever its gradient's size, so this
        is how much faster than CoMeT's other parameters the gates open (1: as fast; the recipes use 1).
    """

    chunk_size: int = 2048
    global_mem_size: int = 512
    temp_stride: int = 8
    temp_budget: int = 2048
    adapter_rank: int = 8
    temp_norm_eps: float = 1e-12
    global_gate: str = "learned"
    reset_memory_at_doc_boundaries: bool = False
    gradient_checkpointing: bool = False
    gate_repeat_max: float = 1.0
    gate_repeat_prob: float = 0.5
    neutral_start: bool = True
    read_gate_scale: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def uses_temp_memory(self) -> bool:
        return self.temp_stride != -1 and self.temp_budget > 0

    @property
    def uses_global_memory(self) -> bool:
        return self.global_mem_size > 0

    def validate(self) -> None:
        def fail(field: str, rule: str, fix: str) -> None:
            value = getattr(self, field)
            raise CoMeTConfigError(f"CoMeTConfig.{field}={value!r}: {rule}. Fix: {fix}.")

        for name in ("chunk_size", "global_mem_size", "temp_stride", "temp_budget", "adapter_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                fail(name, "must be an integer", f"pass an int, e.g. {name}={_DEFAULTS[name]}")
        if self.chunk_size <= 0:
            fail("chunk_size", "must be positive", "use e.g. chunk_size=2048")
        if self.global_mem_size < 0:
            fail("global_mem_size", "must be >= 0 (0 disables the global memory)", "use e.g. 512")
        if self.adapter_rank <= 0:
            fail("adapter_rank", "must be positive", "use the paper's adapter_rank=8")
        if self.temp_stride == 0 or self.temp_stride < -1:
            fail("temp_stride", "must be positive, or -1 to disable the temporary memory", "use e.g. 8")
        if self.temp_stride > self.chunk_size:
            fail("temp_stride", f"must not exceed chunk_size={self.chunk_size}", "use a smaller stride")
        if self.temp_budget < 0:
            fail("temp_budget", "must be >= 0", "use e.g. temp_budget=2048")
        if self.temp_stride > 0 and self.temp_budget % self.temp_stride != 0:
            lo = self.temp_budget - self.temp_budget % self.temp_stride
            fail(
                "temp_budget",
                f"must be a multiple of temp_stride={self.temp_stride}",
                f"use temp_budget={lo or self.temp_stride} or {lo + self.temp_stride}",
            )
        if self.global_gate not in GATE_MODES:
            fail("global_gate", f"must be one of {GATE_MODES}", 'use "learned" (the paper) or "overwrite" (ablation)')
        if isinstance(self.gate_repeat_max, bool) or not isinstance(self.gate_repeat_max, (int, float)) \
                or not self.gate_repeat_max >= 1:
            fail("gate_repeat_max", "must be a number >= 1 (1 turns gate repeats off)", "use 1, or e.g. 4096")
        if not isinstance(self.gate_repeat_prob, (int, float)) or not 0 <= self.gate_repeat_prob <= 1:
            fail("gate_repeat_prob", "must be a probability in [0, 1]", "use e.g. 0.5")
        if self.gate_repeat_max > 1 and self.global_gate != "learned":
            fail("gate_repeat_max", "repeats a learned gate; global_gate is not \"learned\"",
                 "set gate_repeat_max=1 with global_gate=\"overwrite\"")
        if not isinstance(self.neutral_start, bool):
            fail("neutral_start", "must be true or false", "use true (start as the base model) or false (reference)")
        if isinstance(self.read_gate_scale, bool) or not isinstance(self.read_gate_scale, (int, float)) \
                or not self.read_gate_scale > 0:
            fail("read_gate_scale", "must be a positive number", "use e.g. 10")
        if not self.temp_norm_eps > 0:
            fail("temp_norm_eps", "must be positive", "use 1e-12")
        if not (self.uses_global_memory or self.uses_temp_memory):
            fail("global_mem_size", "leaves CoMeT with no memory at all (the temporary path is off too)",
                 "set global_mem_size > 0 or enable temp_stride/temp_budget")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CoMeTConfig":
        """A config from `to_dict`'s output. A field missing from `data` was written before it existed, so it
        loads as the behaviour of that time: neutral_start=False (the reference), read_gate_scale=1."""
        data = {"neutral_start": False, "read_gate_scale": 1.0, **data}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CoMeTConfigError(
                f"unknown CoMeTConfig field(s) {unknown}. Fix: use only {sorted(known)}."
            )
        return cls(**data)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CoMeTConfig)}
