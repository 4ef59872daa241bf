"""SWAT (Sliding Window Attention Training, arXiv 2502.18845) as a pure-torch Hugging Face causal LM.

    from framework.models.swat import SWATConfig, SWATForCausalLM
    cfg = SWATConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     window=128, normalization="sigmoid", slopes="balanced", rope=True)
    model = SWATForCausalLM(cfg)
    out = model(input_ids=ids, labels=ids); model.generate(ids, max_new_tokens=32)

Importing this package registers "swat" with AutoConfig, AutoModel and AutoModelForCausalLM, so
`AutoModelForCausalLM.from_pretrained(saved_dir)` works after `import framework.models.swat`.
"""

from .attention import apply_rope, banded_attention, rope_cos_sin, swat_slopes
from .configuration import SWATConfig, SWATConfigError, swiglu_intermediate_size
from .modeling import SWATForCausalLM, SWATModel, SWATPreTrainedModel, register_auto_classes

register_auto_classes()

__all__ = [
    "SWATConfig",
    "SWATConfigError",
    "SWATForCausalLM",
    "SWATModel",
    "SWATPreTrainedModel",
    "apply_rope",
    "banded_attention",
    "register_auto_classes",
    "rope_cos_sin",
    "swat_slopes",
    "swiglu_intermediate_size",
]
