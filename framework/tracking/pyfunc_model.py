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
(0: off), ``top_p`` (1.0: off), ``seed`` (sampling seed; unset: not seeded), ``chat`` (wrap each
prompt as a user turn in the tokenizer's chat template; default: the ``chat`` model-config value,
true for a model trained on chat data), ``batch_size`` (prompts generated together, left-padded;
default 8).

Caps: ``max_new_tokens`` above the ``max_new_tokens_cap`` model-config value (default 4,096) and a
prompt longer than ``max_prompt_tokens`` (default: 1,048,576 for CoMeT, whose memory is constant,
else the model's ``max_position_embeddings``) are refused with an error naming the cap.

``predict_stream`` takes one prompt and yields the continuation piece by piece as it is generated.

This file imports MLflow (with pandas and numpy), torch, transformers and ``framework.models``
(which the logged model bundles), never Lightning or Ray, so it loads in a plain serving
environment.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"
"""Key of the model directory in ``context.artifacts``."""
MAX_NEW_TOKENS_KEY = "default_max_new_tokens"
"""Model-config key holding the default ``max_new_tokens``."""
DEFAULT_MAX_NEW_TOKENS = 32
MAX_NEW_TOKENS_CAP, MAX_PROMPT_TOKENS = 4096, 1 << 20
DEFAULT_BATCH_SIZE = 8
PROMPT_COLUMN = "prompt"


class PromptError(MlflowException, ValueError):
    """The model input or a generation parameter cannot be used. An MLflow INVALID_PARAMETER_VALUE error, so the
    scoring server answers 400 with this message (not an "unexpected error" with a stack trace)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


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
        self.max_new_tokens_cap = int(config.get("max_new_tokens_cap", MAX_NEW_TOKENS_CAP))
        positions = getattr(self.model.config, "max_position_embeddings", None)
        default_prompt_cap = MAX_PROMPT_TOKENS if self.is_comet or not positions else int(positions)
        self.max_prompt_tokens = int(config.get("max_prompt_tokens", default_prompt_cap))
        # trained on chat: prompts go through the chat template by default (when the tokenizer has one)
        self.default_chat = bool(config.get("chat", False)) and bool(getattr(self.tokenizer, "chat_template", None))

    def _settings(self, params: dict | None):
        params = dict(params or {})
        max_new_tokens, sampling, seed = generation_kwargs(params, self.default_max_new_tokens)
        if max_new_tokens > self.max_new_tokens_cap:
            raise PromptError(f"param max_new_tokens={max_new_tokens} is above this model's cap of "
                              f"{self.max_new_tokens_cap}. Fix: ask for at most {self.max_new_tokens_cap} tokens")
        chat = params.get("chat")
        chat = self.default_chat if chat is None else bool(chat)
        if chat and not getattr(self.tokenizer, "chat_template", None):
            raise PromptError("param chat=true, but this model's tokenizer has no chat template. Fix: send plain "
                              "prompts (chat=false)")
        batch_size = _int(params, "batch_size", DEFAULT_BATCH_SIZE, minimum=1)
        return max_new_tokens, sampling, seed, chat, batch_size

    def _encode(self, prompts: list[str], chat: bool) -> list[list[int]]:
        encoded = []
        for i, prompt in enumerate(prompts):
            if chat:
                prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                            add_generation_prompt=True)
            ids = self.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
            if not ids:
                raise PromptError(f"prompt {i} ({prompt!r}) encodes to no tokens")
            if len(ids) > self.max_prompt_tokens:
                raise PromptError(f"prompt {i} has {len(ids):,} tokens, above this model's cap of "
                                  f"{self.max_prompt_tokens:,}. Fix: shorten it")
            encoded.append(ids)
        return encoded

    def _special(self) -> dict:
        special = {}
        if self.tokenizer.eos_token_id is not None:
            special["eos_token_id"] = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        special["pad_token_id"] = pad if pad is not None else special.get("eos_token_id", 0)
        return special

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        """Through MLflow, `model_input` is always a DataFrame: the logged signature is
        column-based, so MLflow converts lists, strings and dicts first. Called directly, it also
        takes those forms (see `prompts_from_input`). The hint also tells MLflow not to infer a
        schema from it. Prompts go through the model `batch_size` at a time, left-padded; each gets what
        it would get alone (CoMeT streams each prompt length as a group of its own)."""
        import torch

        prompts = prompts_from_input(model_input)
        max_new_tokens, sampling, seed, chat, batch_size = self._settings(params)
        encoded = self._encode(prompts, chat)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        outputs = []
        for lo in range(0, len(encoded), batch_size):
            part = encoded[lo:lo + batch_size]
            input_ids, mask = self._left_padded(part)
            out = self._generate(input_ids, mask, max_new_tokens, generator, seed, sampling, self._special())
            for row in out[:, input_ids.shape[1]:].tolist():
                outputs.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return outputs

    def predict_stream(self, context, model_input, params: dict | None = None):
        """One prompt in; yields the continuation in pieces as the model generates it."""
        import threading

        import torch
        from transformers import TextIteratorStreamer

        prompts = prompts_from_input(model_input)
        if len(prompts) != 1:
            raise PromptError(f"predict_stream takes one prompt; got {len(prompts)}. Fix: use predict for a batch")
        max_new_tokens, sampling, seed, chat, _ = self._settings(params)
        input_ids, mask = self._left_padded(self._encode(prompts, chat))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        failure = []

        def run():
            try:
                self._generate(input_ids, mask, max_new_tokens, generator, seed, sampling, self._special(),
                               streamer=streamer)
            except Exception as err:  # surfaced in the caller's thread below
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()
        if failure:
            raise failure[0]

    def _left_padded(self, encoded: list[list[int]]):
        import torch

        width = max(len(ids) for ids in encoded)
        pad = self._special()["pad_token_id"]
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _generate(self, input_ids, mask, max_new_tokens: int, generator, seed, sampling: dict, special: dict,
                  streamer=None):
        import torch

        extra = {} if streamer is None else {"streamer": streamer}
        if self.is_comet:  # CoMeT's own generate takes a torch.Generator
            return self.model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       generator=generator, **sampling, **special, **extra)
        hf_sampling = {k: v for k, v in sampling.items() if v is not None and (sampling["do_sample"] or k == "do_sample")}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:  # transformers' generate samples from the global RNG
                torch.manual_seed(seed)
            return self.model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       min_new_tokens=0, **hf_sampling, **special, **extra)


mlflow.models.set_model(TextGenerator())
