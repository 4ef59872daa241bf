"""Context compression over a Hugging Face causal LM: the shared encoder-decoder skeleton with RAM
(close reading and skimming) and COMI (marginal-information-gain merging), methods.md §1, §2, §6.

    from framework.models.compression import CompressorConfig, CompressorForQA

The autoencoder of the data-distribution study (methods.md §4), encoder -> k slots -> frozen decoder:

    from framework.models.compression.autoencoder import ContextAutoencoder
"""
