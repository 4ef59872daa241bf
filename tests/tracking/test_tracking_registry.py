"""The registered CoMeT pyfunc: logging, registry versions and aliases, loading in a clean process, serving.

Real MLflow (a SQLite store in tmp_path), a real tiny Qwen3-based CoMeT model and a real fast tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import yaml

from framework.tracking.registry import RegisteredModel, RegistryError, check_registry_store, log_and_register

NAME = "tiny-comet"
ALIAS = "champion"
MAX_NEW = 6
PROMPTS = ["a b c", "hello"]
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")


def _reference(model_dir, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation computed directly with CoMeTForCausalLM, decoded like the pyfunc does."""
    from transformers import AutoTokenizer

    from framework.models.comet import CoMeTForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = CoMeTForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


@pytest.fixture(scope="module")
def registered_comet(tmp_path_factory, tiny_comet_dir, mlflow_store_factory):
    """Version 1 logged inside an active run, version 2 into a finished run given by id (no active run)."""
    root = tmp_path_factory.mktemp("registry_store")
    with mlflow_store_factory(root) as (uri, experiment_id):
        client = mlflow.MlflowClient()
        sys_path = list(sys.path)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            first = log_and_register(tiny_comet_dir, registered_model_name=NAME, alias=ALIAS, max_new_tokens=MAX_NEW)
        other = client.create_run(experiment_id)
        client.set_terminated(other.info.run_id)
        second = log_and_register(tiny_comet_dir, registered_model_name=NAME, alias=ALIAS,
                                  run_id=other.info.run_id, max_new_tokens=MAX_NEW)
        yield SimpleNamespace(tracking_uri=uri, experiment_id=experiment_id, first=first, second=second,
                              run_id=run.info.run_id, other_run_id=other.info.run_id, root=root,
                              sys_path_kept=sys.path == sys_path)


@pytest.fixture(scope="module")
def reference_outputs(tiny_comet_dir):
    return {"greedy": [_reference(tiny_comet_dir, p, MAX_NEW) for p in PROMPTS],
            "short": _reference(tiny_comet_dir, PROMPTS[0], 2)}


def test_log_and_register_twice_makes_two_versions_and_moves_the_alias(registered_comet):
    reg = registered_comet
    client = mlflow.MlflowClient()
    assert isinstance(reg.first, RegisteredModel)
    assert (reg.first.version, reg.second.version) == ("1", "2")
    assert reg.second.uri == f"models:/{NAME}@{ALIAS}" and reg.second.alias == ALIAS
    assert str(client.get_model_version_by_alias(NAME, ALIAS).version) == "2"
    assert str(client.get_model_version(NAME, "1").version) == "1"  # the old version stays
    assert reg.first.model_uri != reg.second.model_uri

    first = mlflow.get_logged_model(reg.first.model_uri.removeprefix("models:/"))
    second = mlflow.get_logged_model(reg.second.model_uri.removeprefix("models:/"))
    assert first.source_run_id == reg.run_id
    # Logged into a run that is not active: the model lands in that run's experiment and the
    # run is left as it was.
    assert second.source_run_id == reg.other_run_id and second.experiment_id == reg.experiment_id
    other = client.get_run(reg.other_run_id)
    assert other.info.status == "FINISHED"
    assert [o.model_id for o in other.outputs.model_outputs] == [second.model_id]
    assert str(second.artifact_location).startswith(Path(reg.root).resolve().as_uri())
    assert reg.sys_path_kept  # MLflow's log-time load does not leave its temp code dir on sys.path


def test_logged_model_is_source_code_plus_safetensors(registered_comet, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=registered_comet.second.model_uri,
                                                     dst_path=str(tmp_path / "dl")))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith(PICKLE_SUFFIXES)], files
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in pyfunc  # the cloudpickle entry of object-logged models
    assert pyfunc["config"] == {"default_max_new_tokens": MAX_NEW, "chat": False}
    assert (local / "pyfunc_model.py").is_file()
    assert (local / pyfunc["code"] / "framework" / "models" / "comet" / "modeling.py").is_file()
    weights = local / pyfunc["artifacts"]["model"]["path"]
    assert json.loads((weights / "config.json").read_text())["model_type"] == "longctx_comet"
    assert (weights / "model.safetensors").is_file()
    assert (weights / "tokenizer.json").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    for dist in ("torch", "transformers", "safetensors", "mlflow"):
        assert any(r.startswith(f"{dist}==") for r in requirements), requirements
    assert f"mlflow=={mlflow.__version__}" in requirements
    signature = mlflow.models.get_model_info(registered_comet.second.uri).signature
    assert signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert signature.outputs.to_dict() == [{"type": "string", "required": True}]
    defaults = {p.name: p.default for p in signature.params.params}
    assert defaults == {"max_new_tokens": MAX_NEW, "do_sample": False, "temperature": 1.0, "top_k": 0,
                        "top_p": 1.0, "seed": None, "chat": None, "batch_size": 8}


_LOAD_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    # Make the editable longctx install invisible: the model must bring its own `framework`.
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    assert importlib.util.find_spec("framework") is None, "framework is importable before loading"
    import mlflow, pandas as pd
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False
    model = mlflow.pyfunc.load_model(sys.argv[1])
    import framework
    out = {
        "framework": framework.__file__,
        "greedy": model.predict(["a b c", "hello"]),
        "short": model.predict("a b c", params={"max_new_tokens": 2}),
        "frame": model.predict(pd.DataFrame({"prompt": ["a b c"]})),
        "dict": model.predict({"prompt": ["a b c", "hello"]}),
        "sampled": [model.predict(["a b c"], params={"do_sample": True, "seed": 7, "top_k": 50,
                                                      "temperature": 0.8}) for _ in range(2)],
    }
    try:
        model.predict(["a b c", ""])
        out["empty"] = None
    except Exception as exc:
        out["empty"] = f"{type(exc).__name__}: {exc}"
    print("RESULT " + json.dumps(out))
""")


def _clean_env(tracking_uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_EXPERIMENT_ID")}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    return env


def test_registered_model_loads_in_a_fresh_process_without_pickle(registered_comet, reference_outputs, tmp_path):
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, f"models:/{NAME}@{ALIAS}"], cwd=tmp_path,
                          env=_clean_env(registered_comet.tracking_uri), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert "/code/framework/" in out["framework"] and not out["framework"].startswith(str(Path.cwd()))
    assert out["greedy"] == reference_outputs["greedy"]
    assert all(isinstance(s, str) for s in out["greedy"]) and len(out["greedy"]) == 2
    assert out["short"] == [reference_outputs["short"]]
    assert out["frame"] == reference_outputs["greedy"][:1]
    assert out["dict"] == reference_outputs["greedy"]
    assert out["sampled"][0] == out["sampled"][1]  # seeded sampling is reproducible
    assert out["empty"] is not None and "prompt 1 is empty" in out["empty"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (it runs in its own session)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def served_comet(registered_comet, tmp_path):
    """`mlflow models serve` on the alias, as a real subprocess; always stopped afterwards."""
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@{ALIAS}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path, env=_clean_env(registered_comet.tracking_uri), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not answer /ping in time:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


@pytest.mark.timeout(420)
def test_models_serve_answers_invocations(served_comet, reference_outputs):
    status, body = _post(served_comet + "/invocations", {"inputs": ["a b c"]})
    assert status == 200, body
    assert body == {"predictions": reference_outputs["greedy"][:1]}

    status, body = _post(served_comet + "/invocations",
                         {"dataframe_split": {"columns": ["prompt"], "data": [["a b c"], ["hello"]]}})
    assert status == 200, body
    assert body == {"predictions": reference_outputs["greedy"]}

    status, body = _post(served_comet + "/invocations", {"inputs": ["a b c"], "params": {"max_new_tokens": 2}})
    assert status == 200 and body == {"predictions": [reference_outputs["short"]]}

    status, body = _post(served_comet + "/invocations", {"inputs": [""]})
    assert status == 400 and "prompt 0 is empty" in body["message"] + body.get("stack_trace", "")


def test_file_store_is_refused_with_a_fix(tmp_path, tiny_comet_dir, monkeypatch):
    file_uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", file_uri)
    mlflow.set_tracking_uri(file_uri)
    try:
        with pytest.raises(RegistryError, match="database-backed") as err:
            log_and_register(tiny_comet_dir, registered_model_name=NAME)
    finally:
        mlflow.set_tracking_uri(None)
    message = str(err.value)
    assert file_uri in message and "sqlite:///" in message and "Fix:" in message
    assert isinstance(err.value, RuntimeError)
    assert not (tmp_path / "mlruns").exists()  # refused before anything was written
    with pytest.raises(RegistryError, match="file store"):
        check_registry_store(str(tmp_path / "plain-path"))
    assert check_registry_store("sqlite:///x.db") == "sqlite:///x.db"


def test_incomplete_or_pickled_model_dirs_are_refused(tmp_path, tiny_comet_dir):
    with pytest.raises(RegistryError, match="does not exist"):
        log_and_register(tmp_path / "nowhere", registered_model_name=NAME)

    no_weights = Path(shutil.copytree(tiny_comet_dir, tmp_path / "no_weights"))
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(RegistryError, match=r"missing model\.safetensors.*save_pretrained"):
        log_and_register(no_weights, registered_model_name=NAME)

    no_tokenizer = Path(shutil.copytree(tiny_comet_dir, tmp_path / "no_tokenizer"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(RegistryError, match="tokenizer="):
        log_and_register(no_tokenizer, registered_model_name=NAME)

    pickled = Path(shutil.copytree(tiny_comet_dir, tmp_path / "pickled"))
    (pickled / "training_args.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(RegistryError, match=r"pickle.*training_args\.bin"):
        log_and_register(pickled, registered_model_name=NAME)

    for alias in ("latest", "v3", "has space"):
        with pytest.raises(RegistryError, match="alias"):
            log_and_register(tiny_comet_dir, registered_model_name=NAME, alias=alias)


def test_prompt_forms_and_bad_inputs():
    from framework.tracking.pyfunc_model import PromptError, generation_kwargs, prompts_from_input

    assert prompts_from_input("a b") == ["a b"]
    assert prompts_from_input(["a", "b"]) == ["a", "b"]
    assert prompts_from_input(pd.DataFrame({"x": [1, 2], "prompt": ["a", "b"]})) == ["a", "b"]
    assert prompts_from_input(pd.DataFrame({"text": ["a", "b"]})) == ["a", "b"]
    assert prompts_from_input({"prompt": ["a", "b"]}) == ["a", "b"]
    assert prompts_from_input(pd.DataFrame([{"prompt": ["a", "b"]}])) == ["a", "b"]  # MLflow's dict conversion
    for bad, match in (([""], "prompt 0 is empty"), (["a", ""], "prompt 1 is empty"), ([], "no prompts"),
                       ([3], "not a string"), ({"a": [], "b": []}, "'prompt' key"), (3.5, "unsupported input")):
        with pytest.raises(PromptError, match=match):
            prompts_from_input(bad)

    assert generation_kwargs(None, 9) == (9, {"do_sample": False, "temperature": 1.0, "top_k": None, "top_p": None},
                                          None)
    assert generation_kwargs({"top_k": 5, "top_p": 0.5, "seed": 3, "do_sample": True}, 9)[1:] == (
        {"do_sample": True, "temperature": 1.0, "top_k": 5, "top_p": 0.5}, 3)
    for params, match in (({"max_new_tokens": -1}, "max_new_tokens"), ({"temperature": 0.0}, "temperature"),
                          ({"top_p": 1.5}, "top_p"), ({"max_new_tokens": 2.5}, "integer"), ({"seed": "x"}, "integer")):
        with pytest.raises(PromptError, match=match):
            generation_kwargs(params, 9)
