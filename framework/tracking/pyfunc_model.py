"""Text generation with any longctx model (CoMeT, SWAT, a baseline causal LM) as an MLflow pyfunc,
logged as *models from code*.

MLflow stores this file (not a pickle of an object) beside the model and runs it at load
time; the ``mlflow.models.set_model`` call at the bottom tells MLflow which object is the
model. The weights travel as a plain ``save_pretrained`` directory under the artifact name
``"model"`` (safetensors only, with the tokenizer files), so loading executes no
pickled code. ``framework.tracking.registry.log_and_register`` is the way to log it.

    model = mlflow.pyfunc.load_model("models:/comet-tiny@champion")
    model.predict(["The passkey is"], params={"max_new_tokens": 16})   # -> ["..."]

Inputs: a prompt string, a list of them, a pandas DataFrame (column ``prompt``, else the first
column) or a dict ``{"prompt": [...]}``. Output: one string per prompt, holding only the
generated continuation, with special tokens removed.

Params (all optional): ``max_new_tokens`` (default: the ``default_max_new_tokens`` model-config
value recorded at log time), ``do_sample`` (False: greedy), ``temperature``, ``top_k``
(0: off), ``top_p`` (1.0: off), ``seed`` (sampling seed; unset: not seeded).

This file imports MLflow (with pandas and numpy), torch, transformers and ``framework.models``
(which the logged model bundles), never Lightning or Ray, so it loads in a plain serving
environment.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"
"""Key of the model directory in ``context.artifacts``."""
MAX_NEW_TOKENS_KEY = "default_max_new_tokens"
"""Model-config key holding the default ``max_new_tokens``."""
DEFAULT_MAX_NEW_TOKENS = 32
PROMPT_COLUMN = "prompt"


class PromptError(ValueError):
    """The model input or a generation parameter cannot be used."""


def prompts_from_input(model_input: Any) -> list[str]:
    """Normalise every accepted input form to a list of prompt strings."""
    import numpy as np

    data = model_input
    if isinstance(data, pd.DataFrame):
        if data.shape[1] == 0:
            raise PromptError("the input DataFrame has no columns; give prompts in a column named 'prompt'")
        column = PROMPT_COLUMN if PROMPT_COLUMN in data.columns else data.columns[0]
        data = data[column].tolist()
    elif isinstance(data, pd.Series):
        data = data.tolist()
    elif isinstance(data, dict):
        if PROMPT_COLUMN in data:
            data = data[PROMPT_COLUMN]
        elif len(data) == 1:
            data = next(iter(data.values()))
        else:
            raise PromptError(f"a dict input needs a {PROMPT_COLUMN!r} key; got keys {sorted(map(str, data))}")
    if isinstance(data, np.ndarray):
        data = data.reshape(-1).tolist()
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise PromptError(
            f"unsupported input type {type(model_input).__name__}: pass a string, a list of strings, "
            f"a DataFrame with a {PROMPT_COLUMN!r} column, or {{{PROMPT_COLUMN!r}: [...]}}"
        )
    prompts = []
    for item in data:
        # MLflow's schema enforcement turns {"prompt": ["a", "b"]} into a one-row DataFrame whose
        # cell is the whole list, so one level of nesting is unpacked here.
        if isinstance(item, np.ndarray):
            item = item.reshape(-1).tolist()
        prompts.extend(item if isinstance(item, (list, tuple)) else [item])
    if not prompts:
        raise PromptError("no prompts given: pass at least one non-empty prompt string")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise PromptError(f"prompt {i} is a {type(prompt).__name__}, not a string: {prompt!r}")
        if not prompt:
            raise PromptError(f"prompt {i} is empty: the model needs at least one prompt token to continue from")
    return prompts


def _int(params: dict, key: str, default, minimum: int | None = None):
    value = params.get(key)
    if value is None:
        return default
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise PromptError(f"param {key}={value!r} must be an integer")
    if minimum is not None and int(value) < minimum:
        raise PromptError(f"param {key}={value!r} must be >= {minimum}")
    return int(value)


def generation_kwargs(params: dict | None, default_max_new_tokens: int) -> tuple[int, dict, int | None]:
    """(max_new_tokens, sampling kwargs for ``generate``, seed) from pyfunc params, validated."""
    params = dict(params or {})
    max_new_tokens = _int(params, "max_new_tokens", default_max_new_tokens, minimum=0)
    do_sample = params.get("do_sample")
    do_sample = False if do_sample is None else bool(do_sample)
    temperature = params.get("temperature")
    temperature = 1.0 if temperature is None else float(temperature)
    if temperature <= 0:
        raise PromptError(f"param temperature={temperature} must be > 0 (use do_sample=False for greedy decoding)")
    top_k = _int(params, "top_k", 0, minimum=0)
    top_p = params.get("top_p")
    top_p = 1.0 if top_p is None else float(top_p)
    if not 0.0 < top_p <= 1.0:
        raise PromptError(f"param top_p={top_p} must be in (0, 1]")
    seed = _int(params, "seed", None)
    kwargs = {"do_sample": do_sample, "temperature": temperature, "top_k": top_k or None,
              "top_p": top_p if top_p < 1.0 else None}
    return max_new_tokens, kwargs, seed


class TextGenerator(PythonModel):
    """Prompt strings in, generated continuations out."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoTokenizer

        from framework.models.loading import is_comet_dir, load_causal_lm

        directory = context.artifacts[MODEL_ARTIFACT]
        self.is_comet = is_comet_dir(directory)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_causal_lm(directory).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        config = context.model_config or {}
        self.default_max_new_tokens = int(config.get(MAX_NEW_TOKENS_KEY, DEFAULT_MAX_NEW_TOKENS))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        """Through MLflow, `model_input` is always a DataFrame: the logged signature is
        column-based, so MLflow converts lists, strings and dicts first. Called directly, it also
        takes those forms (see `prompts_from_input`). The hint also tells MLflow not to infer a
        schema from it."""
        import torch

        prompts = prompts_from_input(model_input)
        max_new_tokens, sampling, seed = generation_kwargs(params, self.default_max_new_tokens)
        special = {}
        if self.tokenizer.eos_token_id is not None:
            special["eos_token_id"] = self.tokenizer.eos_token_id
        if self.tokenizer.pad_token_id is not None:
            special["pad_token_id"] = self.tokenizer.pad_token_id
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        outputs = []
        # CoMeT's chunk layout depends on the prompt length, and SWAT's rolling cache on the
        # positions, so prompts are never padded into a batch: each one is generated on its own.
        for i, prompt in enumerate(prompts):
            input_ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.device)
            if input_ids.shape[1] == 0:
                raise PromptError(f"prompt {i} ({prompt!r}) encodes to no tokens")
            out = self._generate(input_ids, max_new_tokens, generator, seed, sampling, special)
            new_tokens = out[0, input_ids.shape[1]:]
            outputs.append(self.tokenizer.decode(new_tokens.tolist(), skip_special_tokens=True))
        return outputs


    def _generate(self, input_ids, max_new_tokens: int, generator, seed, sampling: dict, special: dict):
        import torch

        if self.is_comet:  # CoMeT's own generate takes a torch.Generator
            return self.model.generate(input_ids, max_new_tokens=max_new_tokens, generator=generator,
                                       **sampling, **special)
        hf_sampling = {k: v for k, v in sampling.items() if v is not None and (sampling["do_sample"] or k == "do_sample")}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:  # transformers' generate samples from the global RNG
                torch.manual_seed(seed)
            return self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                       max_new_tokens=max_new_tokens, min_new_tokens=0, **hf_sampling, **special)


mlflow.models.set_model(TextGenerator())
