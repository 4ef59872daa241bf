"""CoMeT (Collaborative Memory Transformer) as a plug-in for Hugging Face causal LMs.

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
    model = CoMeTForCausalLM.from_base(hf_causal_lm, CoMeTConfig(chunk_size=2048, global_mem_size=512,
                                                                 temp_stride=8, temp_budget=2048))
"""

from .backbone import BackboneError
from .config import CoMeTConfig, CoMeTConfigError
from .hf_config import MODEL_TYPE, CoMeTHFConfig
from .modeling import CoMeTForCausalLM, CoMeTOutput
from .streaming import CoMeTStream


def register_with_transformers() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM.from_pretrained` load a CoMeT folder as CoMeT (no
    trust_remote_code). Runs when `framework` is imported; running it again changes nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(MODEL_TYPE, CoMeTHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(CoMeTHFConfig, CoMeTForCausalLM, exist_ok=True)


register_with_transformers()

__all__ = ["BackboneError", "CoMeTConfig", "CoMeTConfigError", "CoMeTForCausalLM", "CoMeTHFConfig", "CoMeTOutput",
           "CoMeTStream", "register_with_transformers"]
