"""How a method's saved model is logged, registered and served as an MLflow pyfunc.

Each method declares one ``MLflowModel`` in its ``MethodSpec`` (``mlflow_model=``);
``framework.tracking.registry.log_and_register`` reads it from the method that recognises the
directory. The signatures the built-in methods share are here too:

    MLflowModel(name="causal-lm", pyfunc=generation_pyfunc(), signature=generation_signature,
                input_example=lambda n: (["Once upon a time"], {"max_new_tokens": min(n, 4)}),
                required=("config.json", WEIGHTS, TOKENIZER))

``pyfunc`` is either a *models-from-code* file (MLflow keeps the file and runs it at load time,
like ``framework/tracking/pyfunc_model.py``), or a ``mlflow.pyfunc.PythonModel`` subclass with a
no-argument constructor, which ``framework/tracking/method_pyfunc_model.py`` imports and wraps at
load time. Either way nothing is pickled. Only MLflow's signature types are imported, and only
when a signature is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

TRACKING_DIR = Path(__file__).resolve().parents[1] / "tracking"
BACKBONE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
WEIGHTS, TOKENIZER = "|".join(BACKBONE_WEIGHTS), "|".join(TOKENIZER_FILES)


@dataclass(frozen=True)
class MLflowModel:
    """One kind of saved model as MLflow serves it.

    name: the logged model's model_type (e.g. "causal-lm"). pyfunc: a models-from-code file (a path), or a
    PythonModel subclass (see the module docstring). signature(max_new_tokens): the ModelSignature.
    input_example(max_new_tokens): the (input, params) MLflow logs and checks by loading the model once.
    example_input: Python source of an input ``predict`` takes, for the hint a recipe prints. required: files
    the saved directory must hold, each "a|b" for alternatives. save_hint: how to write a complete directory
    (shown when files are missing). code_paths: code shipped with the model besides the ``framework`` package
    (a method outside the package ships its own top-level module or package automatically)."""

    name: str
    pyfunc: Any
    signature: Callable
    input_example: Callable
    example_input: str = "['Hello']"
    required: tuple = ()
    save_hint: str = "Fix: write it with the method's save_model (framework.methods.registry.get_method(name))"
    code_paths: tuple = ()


def generation_signature(max_new_tokens: int):
    """String prompts in, generated strings out, and the generation params with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([
        ParamSpec("max_new_tokens", "long", max_new_tokens),
        ParamSpec("do_sample", "boolean", False),
        ParamSpec("temperature", "double", 1.0),
        ParamSpec("top_k", "long", 0),
        ParamSpec("top_p", "double", 1.0),
        ParamSpec("seed", "long", None),
        ParamSpec("chat", "boolean", None),
        ParamSpec("batch_size", "long", 8),
    ])
    # Unnamed: a named "prompt" column would make MLflow reject a plain list of strings.
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]), params=params)


def qa_signature(max_new_tokens: int):
    """(context, question) string columns in, answer strings out; the target ratio and length as params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec("max_new_tokens", "long", max_new_tokens), ParamSpec("ratio", "double", None)])
    return ModelSignature(inputs=Schema([ColSpec("string", "context"), ColSpec("string", "question")]),
                          outputs=Schema([ColSpec("string")]), params=params)


def reconstruction_signature(max_new_tokens: int = 0):
    """Texts in, their reconstructions out; max_new_tokens 0 means each text's own length (the argument is
    not used: the default stays 0)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 0)]))


def poc_signature(max_new_tokens: int):
    """(context, question) string columns in (the question may be empty); per row the chosen ratio, the
    predicted retention, the context and memory sizes and the answer out; the floor as a param."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec("floor", "double", 0.9), ParamSpec("max_new_tokens", "long", max_new_tokens)])
    outputs = Schema([ColSpec("double", "ratio"), ColSpec("double", "predicted_retention"),
                      ColSpec("long", "context_tokens"), ColSpec("long", "memory_slots"), ColSpec("string", "answer")])
    return ModelSignature(inputs=Schema([ColSpec("string", "context"), ColSpec("string", "question", required=False)]),
                          outputs=outputs, params=params)


def generation_example(max_new_tokens: int):
    return ["Once upon a time"], {"max_new_tokens": min(max_new_tokens, 4)}


def generation_model(name: str, save_hint: str) -> MLflowModel:
    """A causal LM served by framework/tracking/pyfunc_model.py (prompts in, continuations out)."""
    return MLflowModel(name=name, pyfunc=TRACKING_DIR / "pyfunc_model.py", signature=generation_signature,
                       input_example=generation_example, required=("config.json", WEIGHTS, TOKENIZER),
                       save_hint=save_hint)


CAUSAL_LM = generation_model(
    "causal-lm", "Fix: write it with model.save_pretrained(model_dir) and tokenizer.save_pretrained(model_dir)")
"""The plain Hugging Face causal LM (a baseline's or SWAT's save_pretrained directory)."""
