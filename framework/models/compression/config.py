"""The settings of an encoder-decoder context compressor (RAM or COMI), validated when built.

They are saved as ``compressor_config.json`` beside the weights, so a loaded model compresses the
way it was trained. Which parameters train is a training choice and lives in the method's job
(``framework.methods.compression``); only what shapes the model (LoRA ranks, the alignment kind)
is here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

METHODS = ("ram", "comi")
ALIGNMENTS = ("linear", "block")


class CompressorConfigError(ValueError):
    """A compressor setting breaks a rule; the message names the field, the rule and a fix."""


@dataclass
class CompressorConfig:
    """method: ram (close reading + skimming) or comi (marginal-information-gain merging).
    encoder_layers: the encoder is the backbone's first k decoder layers.
    alignment: linear (RAM's Linear) or block (COMI's LSA: one decoder block initialised from the
        backbone's layer `encoder_layers`, or its last layer when the backbone has no deeper one).
    lora_rank: rank of LoRA adapters on the decoder's `lora_targets` (0: none); lora_alpha scales them.
    RAM: segment_size tokens per segment; keep_fraction (rho) of segments read closely; tau the
        temperature of the contrastive loss; contrastive_weight its weight beside the answer loss.
    COMI: ratio tokens per output slot (the compression ratio); alpha/beta weigh relevance and
        redundancy (alpha_s, beta_s of the coarse step, and of the fine step unless merge_alpha /
        merge_beta, its alpha_m / beta_m, are set: a larger merge_alpha concentrates each slot on its
        most query-relevant tokens); coarse/fine/redundancy switch the stages (both stages off =
        mean pooling, GMSA);
        chunk_tokens: long contexts are cut into chunks this long, each compressed on its own."""

    method: str = "comi"
    encoder_layers: int = 8
    alignment: str = "linear"
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    segment_size: int = 50
    keep_fraction: float = 0.125
    tau: float = 0.05
    contrastive_weight: float = 1.0
    ratio: int = 16
    alpha: float = 1.0
    beta: float = 1.0
    merge_alpha: float | None = None
    merge_beta: float | None = None
    coarse: bool = True
    fine: bool = True
    redundancy: bool = True
    chunk_tokens: int = 10000

    def __post_init__(self) -> None:
        def fail(name: str, rule: str, fix: str):
            raise CompressorConfigError(f"compression.{name}={getattr(self, name)!r}: {rule}. Fix: {fix}")

        if self.method not in METHODS:
            fail("method", f"not one of {METHODS}", "use ram or comi")
        if self.alignment not in ALIGNMENTS:
            fail("alignment", f"not one of {ALIGNMENTS}", "use linear (RAM) or block (COMI's LSA)")
        for name in ("encoder_layers", "segment_size", "ratio", "chunk_tokens"):
            if getattr(self, name) < 1:
                fail(name, "must be >= 1", f"e.g. --compression.{name} 8")
        if self.lora_rank < 0:
            fail("lora_rank", "must be >= 0", "0 for no LoRA, or e.g. 8")
        if not 0.0 <= self.keep_fraction <= 1.0:
            fail("keep_fraction", "must be in [0, 1]", "e.g. 0.125 (about 7x with 50-token segments)")
        if self.tau <= 0:
            fail("tau", "must be > 0", "use the paper's 0.05")
        for name in ("alpha", "beta", "merge_alpha", "merge_beta"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                fail(name, "must be >= 0", f"e.g. --compression.{name} 1.0")
        if self.contrastive_weight < 0:
            fail("contrastive_weight", "must be >= 0", "1.0, or 0 to drop the contrastive loss")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CompressorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CompressorConfigError(f"unknown compressor settings {unknown}; known: {sorted(known)}")
        return cls(**data)
