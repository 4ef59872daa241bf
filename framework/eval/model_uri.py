"""Turn what a user types after ``--model`` into a loaded model and its tokenizer: a CoMeT model, or a
plain causal LM that another method saved (SWAT, a full or sliding-window baseline).

    /path/to/dir                  a save_pretrained directory (or any folder holding one)
    models:/<name>@<alias>        a registered model (also models:/<name>/<version> and models:/<model_id>)
    runs:/<run_id>                the model that run logged (its newest registered version, else its logged model)

Registry URIs are resolved against ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the
project's default store (``sqlite:///<cwd>/mlflow.db``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass


class ModelURIError(ValueError):
    """The --model URI does not name a model that can be loaded."""


@dataclass
class LoadedModel:
    model: object  # CoMeTForCausalLM or a transformers causal LM, in eval mode
    tokenizer: object
    directory: str  # the local save_pretrained directory
    uri: str


def _find_model_dir(root: str) -> str | None:
    from framework.methods.registry import find_model_dir

    try:
        return find_model_dir(root)
    except FileNotFoundError:
        return None


def _run_model_uri(client, run_id: str) -> str:
    """The models:/ URI of what run `run_id` logged: its newest registered version, else its logged model."""
    import mlflow

    from framework.tracking.store import require_run

    require_run(client, run_id, "--model", f"runs:/{run_id}", ModelURIError)
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if versions:
        newest = max(versions, key=lambda v: int(v.version))
        return f"models:/{newest.name}/{newest.version}"
    logged = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    if logged:
        newest = max(logged, key=lambda m: m.creation_timestamp)
        return f"models:/{newest.model_id}"
    raise ModelURIError(f"runs:/{run_id}: the run logged no model (it may have stopped before its final step). "
                        f"Fix: evaluate a finished run, or resume this one with --resume runs:/{run_id}")


def resolve_model_dir(uri: str, tracking_uri: str | None = None, scratch: str | None = None) -> str:
    """A local directory holding the model that `uri` names (downloaded if needed)."""
    if not uri:
        raise ModelURIError("--model is empty. Fix: pass a model directory, models:/<name>@<alias> or runs:/<run_id>")
    if not uri.startswith(("models:/", "runs:/")):
        if not os.path.isdir(uri):
            raise ModelURIError(f"--model {uri!r}: no such directory, and not a models:/ or runs:/ URI. "
                                "Fix: pass a save_pretrained directory, models:/<name>@<alias> "
                                "or runs:/<run_id>")
        found = _find_model_dir(uri)
        if found is None:
            raise ModelURIError(f"--model {uri!r} holds no saved model (no comet_config.json, and no config.json with "
                                "model.safetensors, below it). Fix: pass a directory written by save_pretrained")
        return found

    import mlflow

    from framework.job import TrackingConfig
    from framework.tracking.store import check_store, resolve_tracking_uri

    store = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri))
    check_store(store)
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    client = mlflow.MlflowClient()
    model_uri = uri
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].strip("/").split("/")[0]
        model_uri = _run_model_uri(client, run_id)
    scratch = scratch or tempfile.mkdtemp(prefix="longctx-model-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch)
    except Exception as err:  # noqa: BLE001 - MlflowException, RestException, OSError
        raise ModelURIError(f"--model {uri}: MLflow could not fetch it from {store} ({str(err).splitlines()[0]}). "
                            "Fix: check the name and alias or version in the MLflow UI (Models tab), and that "
                            "--tracking-uri points at the store that holds it") from None
    found = _find_model_dir(local)
    if found is None:
        raise ModelURIError(f"--model {uri}: the artifact holds no saved model directory. "
                            "Fix: name a model logged by a longctx recipe (framework.tracking.registry)")
    return found


def load_model(uri: str, tracking_uri: str | None = None, device: str | None = None, dtype=None,
               compressor: bool = False) -> LoadedModel:
    """Resolve `uri` and load the model and its tokenizer, ready for inference. compressor: the model
    must be a RAM/COMI compressor (`longctx eval qa`); else it must be a causal LM."""
    import torch
    from transformers import AutoTokenizer

    from framework.methods.registry import load_saved_model
    from framework.models.loading import NotACausalLMError, is_compressor_dir, load_causal_lm

    directory = resolve_model_dir(uri, tracking_uri)
    if compressor and not is_compressor_dir(directory):
        raise ModelURIError(f"--model {uri} is a causal LM, not a RAM/COMI compressor. Fix: pass a model that "
                            "recipes/ram_qa.py or recipes/comi_qa.py registered; evaluate causal LMs with "
                            "`longctx eval passkey` or `longctx eval perplexity`")
    try:
        model = load_saved_model(directory) if compressor else load_causal_lm(directory)
    except NotACausalLMError as err:
        raise ModelURIError(f"--model {uri}: {err}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device=device, dtype=dtype or model.dtype).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # noqa: BLE001 - OSError/ValueError from transformers
        raise ModelURIError(f"--model {uri}: the model directory has no loadable tokenizer ({err}). "
                            "Fix: save the model with save_pretrained(dir, tokenizer=tokenizer)") from None
    return LoadedModel(model=model, tokenizer=tokenizer, directory=directory, uri=uri)
