"""SWATConfig: the hyper-parameters of a SWAT decoder, validated when the config is built.

SWAT (Sliding Window Attention Training, arXiv 2502.18845) is a pre-norm decoder whose attention
sees only the last `window` tokens, weighs them with a sigmoid instead of a softmax, and adds a
per-head linear position bias ("balanced ALiBi") on top of RoPE. See `attention.py` for the maths.
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

NORMALIZATIONS = ("sigmoid", "softmax")
SLOPE_MODES = ("balanced", "negative", "positive", "none")


class SWATConfigError(ValueError):
    """A SWATConfig field breaks a rule; the message names the field, the rule and a fix."""


def swiglu_intermediate_size(hidden_size: int) -> int:
    """The usual SwiGLU width: 8/3 of `hidden_size` (same parameter count as a 4x GELU MLP),
    rounded up to a multiple of 64 so the matmuls stay aligned."""
    return 64 * math.ceil(8 * hidden_size / 3 / 64)


class SWATConfig(PreTrainedConfig):
    """Configuration of a SWAT causal LM.

    vocab_size, hidden_size, num_hidden_layers, num_attention_heads: the usual transformer sizes
        (head_dim = hidden_size / num_attention_heads; there is no grouped-query attention).
    intermediate_size: SwiGLU MLP width; None picks `swiglu_intermediate_size(hidden_size)`.
    window: keys per query, the query itself included: query m sees keys m - window < n <= m.
        With L layers, information travels at most 1 + (window - 1) * L positions.
    normalization: "sigmoid" (the paper: each weight is sigmoid(score), no normaliser) or
        "softmax" (the ablation: ordinary softmax over the window).
    slopes: per-head linear position bias s_h * (m - n) added to the scores (paper Eq. 4);
        "balanced" (half the heads -2^-k, half +2^-k: SWAT(-+)), "negative" (SWAT(-)),
        "positive" (SWAT(+)) or "none". See `attention.swat_slopes`.
    rope, rope_theta: rotary position embedding on queries and keys, and its base.
    block_size: query block length of the banded computation (a speed/memory knob only, results
        do not depend on it); None means `window`.
    rms_norm_eps, initializer_range, tie_word_embeddings, use_cache, bos/eos/pad_token_id: as in
        other Hugging Face decoders.

    `config.sliding_window` is an alias of `window`; it makes `DynamicCache(config=config)` (what
    `generate` builds) keep a rolling window of keys/values per layer.
    """

    model_type = "swat"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"sliding_window": "window"}

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    window: int = 128
    normalization: str = "sigmoid"
    slopes: str = "balanced"
    rope: bool = True
    rope_theta: float = 10000.0
    block_size: int | None = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None and _is_int(self.hidden_size) and self.hidden_size > 0:
            self.intermediate_size = swiglu_intermediate_size(self.hidden_size)
        self.validate_swat()
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def query_block_size(self) -> int:
        """The block length actually used by the banded attention."""
        return self.block_size if self.block_size is not None else self.window

    def validate_swat(self) -> None:
        """Raise SWATConfigError for the first field that breaks a rule."""

        def fail(field: str, rule: str, fix: str) -> None:
            raise SWATConfigError(f"SWATConfig.{field}={getattr(self, field)!r}: {rule}. Fix: {fix}.")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "window"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                fail(name, "must be a positive integer", f"pass e.g. {name}={_EXAMPLES[name]}")
        if self.block_size is not None and (not _is_int(self.block_size) or self.block_size <= 0):
            fail("block_size", "must be a positive integer or None (None means block_size = window)",
                 "leave block_size=None or pass e.g. block_size=128")
        if self.hidden_size % self.num_attention_heads != 0:
            fail("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}",
                 f"use hidden_size={self.num_attention_heads * max(1, self.hidden_size // self.num_attention_heads)}"
                 " or change num_attention_heads")
        if self.normalization not in NORMALIZATIONS:
            fail("normalization", f"must be one of {NORMALIZATIONS}",
                 'use "sigmoid" (the paper) or "softmax" (the ablation)')
        if self.slopes not in SLOPE_MODES:
            fail("slopes", f"must be one of {SLOPE_MODES}",
                 'use "balanced" (SWAT(-+)), "negative" (SWAT(-)), "positive" (SWAT(+)) or "none"')
        if self.slopes == "balanced" and self.num_attention_heads % 2 != 0:
            fail("num_attention_heads",
                 'must be even with slopes="balanced" (half the heads get negative slopes, half positive)',
                 f"use num_attention_heads={self.num_attention_heads + 1}, or slopes=\"negative\"")
        if not isinstance(self.rope, bool):
            fail("rope", "must be True or False", "pass rope=True (the paper) or rope=False")
        if self.rope and self.head_dim % 2 != 0:
            fail("hidden_size", f"gives an odd head_dim={self.head_dim}, but RoPE rotates pairs of dimensions",
                 "pick hidden_size / num_attention_heads even, or rope=False")
        for name, fix in (("rope_theta", "use 10000.0"), ("rms_norm_eps", "use 1e-6"),
                          ("initializer_range", "use 0.02")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                fail(name, "must be a positive number", fix)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_EXAMPLES = {"vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2752, "num_hidden_layers": 24,
             "num_attention_heads": 16, "window": 128}
