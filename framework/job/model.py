"""The `model` section: which Hugging Face causal LM and tokenizer a method starts from.

`base` is a local directory or a model id loaded with `from_pretrained`, or `random:<family>`
for a randomly initialised model built from `arch` (tiny runs and tests need no download).
`tokenizer` defaults to the base's own; `project` picks the tokenizer shipped with longctx.
Loading them is `framework.methods.base_model` (load_tokenizer, build_base_model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

RANDOM_PREFIX = "random:"
RANDOM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "swat")  # swat: only the swat method builds it


class BaseModelError(ValueError):
    """The base model or tokenizer cannot be built; the message says why and how to fix it."""


@dataclass
class BaseModelConfig:
    base: str = "Qwen/Qwen3-4B"
    tokenizer: str | None = None
    arch: dict = field(default_factory=dict)
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.base.startswith(RANDOM_PREFIX):
            family = self.base[len(RANDOM_PREFIX):]
            if family not in RANDOM_FAMILIES:
                raise BaseModelError(f"model.base={self.base!r}: unknown family {family!r}. "
                                     f"Fix: use one of {[RANDOM_PREFIX + f for f in RANDOM_FAMILIES]}")
            if self.tokenizer is None:
                raise BaseModelError(f"model.base={self.base!r} has no tokenizer of its own. "
                                     "Fix: set model.tokenizer (e.g. 'project', or a tokenizer directory)")
        elif self.arch:
            raise BaseModelError(f"model.arch={self.arch!r} only applies to model.base='random:<family>'. "
                                 "Fix: drop model.arch (on the command line: --model.arch '{}' before --model.base), or use a random base")


def tiny_qwen3(hidden_size: int = 64) -> BaseModelConfig:
    """A random 2-layer Qwen3 (4 heads, 2 KV heads, MLP 2x hidden) on the project tokenizer: the tiny presets' base."""
    arch = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=4096)
    return BaseModelConfig(base=RANDOM_PREFIX + "qwen3", tokenizer="project", arch=arch)
