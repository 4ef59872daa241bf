"""Log a trained model (whatever method saved it) as an MLflow model, register it, and move an alias to it.

    from framework.tracking.registry import log_and_register
    model.save_pretrained("out/final", tokenizer=tokenizer)      # safetensors + tokenizer files
    registered = log_and_register("out/final", registered_model_name="comet-tiny", run_id=run_id)
    registered.uri        # "models:/comet-tiny@champion"
    mlflow.pyfunc.load_model(registered.uri).predict(["The passkey is"])

The method that recognises the directory (``framework.methods.registry.method_of_dir``) says how it
is served (its ``MethodSpec.mlflow_model``). The model is a *models-from-code* pyfunc (e.g.
``framework/tracking/pyfunc_model.py`` for a causal LM): MLflow keeps that source file, the
``framework`` package (as ``code_paths``, so the model loads where longctx is not installed; a
method defined outside it ships its own module too) and the ``save_pretrained`` directory. Nothing
is pickled, so loading works with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` unset.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from framework.methods.mlflow_model import CAUSAL_LM, MLflowModel

HERE = Path(__file__).resolve().parent
MODEL_ARTIFACT = "model"  # must match the MODEL_ARTIFACT of every pyfunc file
MAX_NEW_TOKENS_KEY = "default_max_new_tokens"  # must match pyfunc_model.MAX_NEW_TOKENS_KEY
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PYFUNC_CLASS_KEY = "pyfunc_class"  # must match method_pyfunc_model.PYFUNC_CLASS_KEY
PINNED_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "safetensors", "mlflow")
_DB_FREE_SCHEMES = {"", "file"}


class RegistryError(RuntimeError):
    """The model cannot be logged or registered; the message names the cause and the fix."""


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version and the alias that now points to it."""

    name: str
    version: str
    alias: str
    model_uri: str  # the logged model's own URI: models:/<model_id>

    @property
    def uri(self) -> str:
        """Load with ``mlflow.pyfunc.load_model(registered.uri)``."""
        return f"models:/{self.name}@{self.alias}"


def check_model_dir(model_dir) -> Path:
    """Raise RegistryError unless `model_dir` is a complete, pickle-free directory that a method saved (a CoMeT,
    RAM/COMI, autoencoder, PoC, plain Hugging Face causal LM or any registered method's save; the method's
    MLflowModel.required names the files), with its tokenizer."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise RegistryError(f"model directory {str(directory)!r} does not exist or is not a directory. "
                            f"{CAUSAL_LM.save_hint}")
    kind = model_kind(directory)
    missing = [" or ".join(choice.split("|")) for choice in kind.required
               if not any((directory / name).is_file() for name in choice.split("|"))]
    if missing:
        raise RegistryError(f"model directory {str(directory)!r} is not a complete {kind.name} checkpoint: "
                            f"missing {', '.join(missing)}. {kind.save_hint}")
    pickled = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise RegistryError(
            f"model directory {str(directory)!r} holds pickle-format files {pickled[:5]}; the registered model "
            "must load without unpickling anything. Fix: remove them and keep only the safetensors weights "
            "that save_pretrained writes (save_pretrained(..., safe_serialization=True), the default)"
        )
    return directory


def check_registry_store(registry_uri: str | None = None) -> str:
    """Raise RegistryError unless the registry URI is a database-backed store or a server."""
    import mlflow

    uri = registry_uri or mlflow.get_registry_uri()
    scheme = urlparse(uri).scheme.lower()
    if scheme in _DB_FREE_SCHEMES or len(scheme) == 1:  # a bare path or a Windows drive letter
        raise RegistryError(
            f"the MLflow model registry needs a database-backed store, but the registry URI is {uri!r}, "
            "a file store. Fix: set MLFLOW_TRACKING_URI (or --tracking-uri) to sqlite:///<dir>/mlflow.db or to "
            "an http(s):// tracking server, or call mlflow.set_registry_uri() with one of those"
        )
    return uri


def pinned_requirements() -> list[str]:
    """``name==version`` for the packages the pyfunc imports, as installed here.

    A local version label (``2.13.0+cpu``) is dropped: ``torch==2.13.0`` still matches the CPU
    build, and lets a GPU server install its own build of the same release.
    """
    requirements = []
    for dist in PINNED_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist != "mlflow":
                raise
            import mlflow  # mlflow-skinny installs the module under another distribution name

            version = mlflow.__version__
        requirements.append(f"{dist}=={version.split('+', 1)[0]}")
    return requirements


def model_kind(directory: Path) -> MLflowModel:
    """How the directory is served: the MLflow model of the method that recognises it
    (framework.methods.registry.method_of_dir), else the plain causal LM's."""
    from framework.methods.registry import get_method, method_of_dir

    spec = method_of_dir(directory) or get_method("causal_lm")
    if spec.mlflow_model is None:
        raise RegistryError(f"{str(directory)!r} was saved by the {spec.name!r} method, which declares no MLflow "
                            "model. Fix: give its MethodSpec mlflow_model=MLflowModel(...) (docs/write_a_method.md)")
    return spec.mlflow_model


def _served_code(kind: MLflowModel, directory: Path) -> tuple[str, list[str], dict]:
    """(the models-from-code file, code_paths, extra model_config) of a kind: its own file, or the wrapper that
    imports its PythonModel class; the framework package, the kind's code_paths, and the code of a method defined
    outside the package (its top-level module or package)."""
    from framework.methods.registry import method_of_dir

    code = [_framework_dir(), *map(os.fspath, kind.code_paths)]
    spec = method_of_dir(directory)
    modules = [spec.job.__module__] if spec is not None else []
    extra = {}
    if isinstance(kind.pyfunc, type):
        served = HERE / "method_pyfunc_model.py"
        extra[PYFUNC_CLASS_KEY] = f"{kind.pyfunc.__module__}:{kind.pyfunc.__qualname__}"
        modules.append(kind.pyfunc.__module__)
    else:
        served = Path(kind.pyfunc)
    for module in modules:
        path = _top_level_code(module)
        if path is not None and path not in code:
            code.append(path)
    return str(served), code, extra


def _top_level_code(module: str) -> str | None:
    """The file or package directory of `module`'s top-level package, unless it is framework (always shipped)."""
    top = module.split(".", 1)[0]
    if top in ("framework", "__main__"):
        return None
    found = sys.modules.get(top)
    where = getattr(found, "__file__", None)
    if where is None:
        return None
    where = Path(where).resolve()
    return str(where.parent if where.name == "__init__.py" else where)


def _framework_dir() -> str:
    import framework

    return str(Path(framework.__file__).resolve().parent)


def _mlflow_call(what: str, fn, *args, **kwargs):
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        raise RegistryError(f"{what} failed: {exc.message}") from exc


def log_and_register(model_dir, *, registered_model_name: str, alias: str = "champion", run_id: str | None = None,
                     max_new_tokens: int = 32, name: str = "model", chat: bool = False,
                     max_new_tokens_cap: int | None = None, max_prompt_tokens: int | None = None) -> RegisteredModel:
    """Log `model_dir` as a pyfunc, register a new version of `registered_model_name`, move `alias` to it.

    model_dir: a ``CoMeTForCausalLM.save_pretrained(dir, tokenizer=...)`` directory, or any Hugging Face
        causal LM's ``save_pretrained`` directory with its tokenizer (safetensors only).
    run_id: the run the model belongs to; default: the active run. Without either, the model is
        logged in the current experiment without a source run.
    max_new_tokens: the default generation length of ``predict``.
    chat: the model was trained on chat: ``predict`` wraps prompts in the tokenizer's chat template by default.
    max_new_tokens_cap, max_prompt_tokens: the served model's caps (defaults: see pyfunc_model.py).
    name: the logged model's name.
    """
    import mlflow
    from mlflow.models import Model

    from framework.tracking.redact import redact_params

    if not registered_model_name or not str(registered_model_name).strip():
        raise RegistryError("registered_model_name is empty. Fix: pass a name such as 'comet-qwen3-0.6b'")
    # MLflow's own alias rules, checked before anything is logged.
    if not alias or not re.fullmatch(r"[\w\-]+", alias) or re.fullmatch(r"(?i)latest|v\d+", alias):
        raise RegistryError(f"alias {alias!r} cannot be used: an alias holds only letters, digits, '_' and '-', "
                            "and 'latest' and 'v<number>' are reserved. Fix: use a name such as 'champion'")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise RegistryError(f"max_new_tokens={max_new_tokens!r} must be a non-negative integer")
    directory = check_model_dir(model_dir)
    check_registry_store()
    check_registry_store(mlflow.get_tracking_uri())  # the run and the logged model live in the tracking store

    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    run_id = run_id or (active.info.run_id if active else None)
    experiment_id, run_params = None, {}
    if run_id is not None:
        run = _mlflow_call(f"looking up run {run_id!r}", client.get_run, run_id)
        # the run's params are copied into the logged model: never a credential (framework.tracking.redact)
        experiment_id, run_params = run.info.experiment_id, redact_params(dict(run.data.params))

    # Creating the LoggedModel here, in the run's own experiment, lets Model.log attach it to any
    # run (pyfunc.log_model only knows the active run, and would put the model in the current
    # experiment rather than the run's).
    kind = model_kind(directory)
    served, code_paths, extra_config = _served_code(kind, directory)
    logged = _mlflow_call("creating the logged model", mlflow.initialize_logged_model, name=name,
                          source_run_id=run_id, params=run_params or None, model_type=kind.name,
                          experiment_id=experiment_id)
    signature, example = kind.signature(max_new_tokens), kind.input_example(max_new_tokens)
    # MLflow loads the model once while logging it, to check the input example; that load puts
    # the temporary copy of the bundled code on sys.path for good, so sys.path is restored after.
    saved_sys_path = list(sys.path)
    try:
        info = _mlflow_call(
            "logging the model", Model.log,
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
            python_model=served,
            artifacts={MODEL_ARTIFACT: os.fspath(directory.resolve())},
            code_paths=code_paths,
            model_config={MAX_NEW_TOKENS_KEY: max_new_tokens, "chat": bool(chat), **extra_config,
                          **({"max_new_tokens_cap": int(max_new_tokens_cap)} if max_new_tokens_cap else {}),
                          **({"max_prompt_tokens": int(max_prompt_tokens)} if max_prompt_tokens else {})},
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(),
        )
    finally:
        sys.path[:] = saved_sys_path
    version = _mlflow_call(f"registering {info.model_uri} as {registered_model_name!r}",
                           mlflow.register_model, info.model_uri, registered_model_name)
    _mlflow_call(f"moving alias {alias!r} of {registered_model_name!r} to version {version.version}",
                 client.set_registered_model_alias, registered_model_name, alias, version.version)
    return RegisteredModel(name=registered_model_name, version=str(version.version), alias=alias,
                           model_uri=info.model_uri)
