"""Context compression over a Hugging Face causal LM: the shared encoder-decoder skeleton with RAM
(close reading and skimming) and COMI (marginal-information-gain merging), methods.md §1, §2, §6.

    from framework.models.compression import CompressorConfig, CompressorForQA
"""
