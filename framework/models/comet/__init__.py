"""CoMeT (Collaborative Memory Transformer) as a plug-in for Hugging Face causal LMs.

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
    model = CoMeTForCausalLM.from_base(hf_causal_lm, CoMeTConfig(chunk_size=2048, global_mem_size=512,
                                                                 temp_stride=8, temp_budget=2048))
"""

from .backbone import BackboneError
from .config import CoMeTConfig, CoMeTConfigError
from .modeling import CoMeTForCausalLM, CoMeTOutput
from .streaming import CoMeTStream

__all__ = ["BackboneError", "CoMeTConfig", "CoMeTConfigError", "CoMeTForCausalLM", "CoMeTOutput", "CoMeTStream"]
