"""Load and recognise the models longctx methods save: the file-marker checks (a CoMeT directory, a
RAM/COMI compressor directory, a context autoencoder, a PoC predictor, a plain Hugging Face causal LM
directory), loading any causal LM, and the walk that finds a saved model under a folder.

    model = load_causal_lm(directory)        # CoMeTForCausalLM, SWATForCausalLM, LlamaForCausalLM, ...

Which method saved a directory, and loading it with that method, is
``framework.methods.registry`` (``method_of_dir``, ``find_model_dir``, ``load_saved_model``): it asks
every method's ``MethodSpec.recognizes``, so this module knows no method list.

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


def is_swat_dir(directory: str) -> bool:
    """A Hugging Face directory whose config.json has model_type "swat"."""
    import json

    if not is_hf_dir(directory):
        return False
    try:
        with open(os.path.join(directory, HF_CONFIG)) as fh:
            return json.load(fh).get("model_type") == "swat"
    except (OSError, ValueError, AttributeError):
        return False


class NotACausalLMError(ValueError):
    """A directory holds a compressor (RAM, COMI), which answers questions about a context rather than
    continuing a prompt, or a context autoencoder, which reconstructs a text from its slots."""


def is_hf_dir(directory: str) -> bool:
    names = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    return HF_CONFIG in names and any(w in names for w in HF_WEIGHTS)


def walk_model_dirs(root: str, is_own, is_plain) -> str:
    """The shallowest directory under `root` (sorted walk) for which is_own(dir) holds (a method's own marker:
    a CoMeT, compressor or autoencoder directory, whose subfolders may also look like Hugging Face models),
    else the shallowest for which is_plain(dir) holds (a plain Hugging Face directory)."""
    plain = None
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if is_own(dirpath):
            return dirpath
        if plain is None and is_plain(dirpath):
            plain = dirpath
    if plain is None:
        raise FileNotFoundError(f"no saved model under {root}: no comet_config.json, and no config.json with "
                                "model.safetensors. Fix: point at a directory written by save_pretrained")
    return plain


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
