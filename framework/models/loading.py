"""Find and load any model a longctx method saves: a CoMeT directory, a RAM/COMI compressor
directory, a context autoencoder directory, or a plain Hugging Face causal LM directory (SWAT, or a
full/sliding-attention baseline).

    directory = find_model_dir(downloaded_artifact_root)
    model = load_causal_lm(directory)        # CoMeTForCausalLM, SWATForCausalLM, LlamaForCausalLM, ...
    model = load_saved_model(directory)      # any of those, a CompressorForQA (RAM, COMI) or a ContextAutoencoder

Importing this module registers SWAT with the transformers Auto classes, so AutoModelForCausalLM
loads a SWAT directory. No Lightning or Ray here: the MLflow pyfunc uses it in a serving process.
"""

from __future__ import annotations

import os

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def is_comet_dir(directory: str) -> bool:
    from framework.models.comet.modeling import COMET_CONFIG

    return os.path.isfile(os.path.join(directory, COMET_CONFIG))


def is_autoencoder_dir(directory: str) -> bool:
    from framework.models.compression.autoencoder import AUTOENCODER_CONFIG

    return os.path.isfile(os.path.join(directory, AUTOENCODER_CONFIG))


def is_compressor_dir(directory: str) -> bool:
    from framework.models.compression.skeleton import COMPRESSOR_CONFIG

    return os.path.isfile(os.path.join(directory, COMPRESSOR_CONFIG))


def is_poc_dir(directory: str) -> bool:
    from framework.models.compression.poc_predictor import PREDICTOR_CONFIG

    return os.path.isfile(os.path.join(directory, PREDICTOR_CONFIG))


class NotACausalLMError(ValueError):
    """A directory holds a compressor (RAM, COMI), which answers questions about a context rather than
    continuing a prompt, or a context autoencoder, which reconstructs a text from its slots."""


def is_hf_dir(directory: str) -> bool:
    names = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    return HF_CONFIG in names and any(w in names for w in HF_WEIGHTS)


def find_model_dir(root: str) -> str:
    """The saved model under `root`: the CoMeT, compressor or autoencoder directory if there is one (their decoder
    files also look like a Hugging Face model), else the shallowest Hugging Face model directory."""
    hf = None
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if is_poc_dir(dirpath):  # a PoC predictor holds its compressor in compressor/, below it
            return dirpath
        if is_comet_dir(dirpath) or is_compressor_dir(dirpath) or is_autoencoder_dir(dirpath):
            return dirpath
        if hf is None and is_hf_dir(dirpath):
            hf = dirpath
    if hf is None:
        raise FileNotFoundError(f"no saved model under {root}: no comet_config.json, and no config.json with "
                                "model.safetensors. Fix: point at a directory written by save_pretrained")
    return hf


def load_causal_lm(directory: str, **load_kwargs):
    """The causal LM saved in `directory`, whichever method wrote it."""
    if is_autoencoder_dir(directory):
        raise NotACausalLMError(f"{directory} holds a context autoencoder (an encoder and a frozen decoder), which "
                                "reconstructs a text from its slots. Fix: load it with "
                                "ContextAutoencoder.from_pretrained, or load one of its causal LMs from "
                                f"{directory}/encoder or {directory}/decoder")
    if is_compressor_dir(directory):
        raise NotACausalLMError(f"{directory} holds a RAM/COMI compressor, which answers questions about a context "
                                "instead of continuing a prompt. Fix: evaluate it with `longctx eval qa --model ...`; "
                                "in Python load it with CompressorForQA.from_pretrained")
    if is_comet_dir(directory):
        from framework.models.comet import CoMeTForCausalLM

        return CoMeTForCausalLM.from_pretrained(directory, **load_kwargs)
    import framework.models.swat  # noqa: F401 - registers model_type "swat" with the Auto classes
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, **load_kwargs)


def load_saved_model(directory: str, **load_kwargs):
    """Whatever a longctx method saved in `directory`: a compressor, an autoencoder, or a causal LM."""
    if is_autoencoder_dir(directory):
        from framework.models.compression.autoencoder import ContextAutoencoder

        return ContextAutoencoder.from_pretrained(directory, **load_kwargs)
    if is_compressor_dir(directory):
        from framework.models.compression.skeleton import CompressorForQA

        return CompressorForQA.from_pretrained(directory, **load_kwargs)
    return load_causal_lm(directory, **load_kwargs)
