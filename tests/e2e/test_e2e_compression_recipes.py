"""End to end: RAM and COMI recipes train on real Ray and MLflow, register a QA model that
`mlflow models serve` answers, that loads through the Hugging Face path, that `longctx eval qa`
scores, and that resumes; bad settings exit 2 before Ray starts."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow import MlflowClient
from page_commands import shown
from recipe_runs import ROOT, free_port, recipe_env, run_recipe

pytestmark = pytest.mark.timeout(900)

RAM = ROOT / "recipes" / "ram_qa.py"
COMI = ROOT / "recipes" / "comi_qa.py"
TINY = ["--preset", "tiny", "--data.seq_len", "256", "--launch.checkpoint_every_n_steps", "2"]
SPEED = TINY[2:]
ROWS = {"context": ["pear: 41907. plum: 22815. fig: 30501."], "question": ["What is the value of plum?"]}

LOAD = """
import json, os, mlflow
from transformers import AutoModelForCausalLM
from framework.models.compression.skeleton import CompressorForQA
path = mlflow.artifacts.download_artifacts("{uri}")
model_dir = os.path.join(path, "artifacts", "model")
model = CompressorForQA.from_pretrained(model_dir)
decoder = AutoModelForCausalLM.from_pretrained(model_dir)
answers = mlflow.pyfunc.load_model("{uri}").predict({rows}, params={{"ratio": 4, "max_new_tokens": 6}})
print(json.dumps({{"method": model.config.method, "decoder": decoder.config.model_type, "answers": answers,
                  "files": sorted(os.listdir(model_dir))}}))
"""


def _python(cwd, tracking_uri, code):
    env = {**recipe_env(), "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ram_on_two_workers_registers_a_qa_model_that_loads_scores_and_resumes(tmp_path):
    # docs/recipes/ram_qa.md's second command: the tiny preset with the keep fraction drawn per step
    ram = shown("python recipes/ram_qa.py --preset tiny --compression.keep_sampling uniform", "recipes/ram_qa.md")
    run = run_recipe(tmp_path, *SPEED, "--num-workers", "2", "--max-steps", "4", command=ram)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "registered model: models:/ram-qa-tiny@champion (version 1)" in run.stdout
    assert "'question': ['What is the value of plum?']" in run.stdout  # the printed load hint fits this model
    client = MlflowClient(run.tracking_uri)
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED" and info.data.params["data.kind"] == "qa_facts"
    assert info.data.params["compression.segment_size"] == "16"
    assert info.data.params["compression.keep_sampling"] == "uniform"
    for key in ("train/loss", "train/aux_loss", "train/compression_ratio", "train/answer_segment_recall"):
        assert len(client.get_metric_history(run.run_id, key)) == 4, key
    ratios = [m.value for m in client.get_metric_history(run.run_id, "train/compression_ratio")]
    # a keep fraction drawn from U(0, 1] per step: between all kept (1x) and one segment kept (< 16x)
    assert all(1 <= r < 16 for r in ratios) and len({round(r, 4) for r in ratios}) > 1, ratios

    got = _python(tmp_path, run.tracking_uri, LOAD.format(uri="models:/ram-qa-tiny@champion", rows=ROWS))
    assert got["method"] == "ram" and got["decoder"] == "qwen3"
    assert {"compressor_config.json", "compressor.safetensors", "model.safetensors"} <= set(got["files"])
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in got["files"])
    assert len(got["answers"]) == 1 and isinstance(got["answers"][0], str)

    evaluated = subprocess.run(
        [sys.executable, "-m", "framework.cli", "eval", "qa", "--model", "models:/ram-qa-tiny@champion",
         "--tracking-uri", run.tracking_uri, "--num-samples", "4", "--batch-size", "4", "--ratios", "4,8",
         "--seq-len", "256", "--out", str(tmp_path / "qa")],
        cwd=tmp_path, env=recipe_env(), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert summary["method"] == "ram" and set(summary["ratios"]) == {"4", "8"}
    assert (tmp_path / "qa" / "qa.png").is_file()

    resumed = run_recipe(tmp_path, *SPEED, "--num-workers", "2", "--max-steps", "6", "--resume", f"runs:/{run.run_id}",
                         command=ram)
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert resumed.run_id == run.run_id
    steps = [m.step for m in client.get_metric_history(run.run_id, "train/loss")]
    assert sorted(steps) == sorted(set(steps)) and max(steps) >= 5 and len(steps) == 6


def _stop(proc):
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_comi_registers_a_model_that_mlflow_models_serve_answers(tmp_path):
    # docs/recipes/comi_qa.md's ablation command (mean pooling) starts with its plain tiny command
    comi = shown("python recipes/comi_qa.py --preset tiny --compression.coarse false --compression.fine false",
                 "recipes/comi_qa.md")
    run = run_recipe(tmp_path, *SPEED, "--max-steps", "2", command=comi)
    assert run.returncode == 0, run.stdout[-5000:]
    params = MlflowClient(run.tracking_uri).get_run(run.run_id).data.params
    assert params["compression.ratio"] == "8"
    assert params["compression.coarse"] == "false" and params["compression.fine"] == "false"
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**recipe_env(), "MLFLOW_TRACKING_URI": run.tracking_uri}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/comi-qa-tiny@champion",
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.5)
        status, body = _post(url + "/invocations", {
            "dataframe_split": {"columns": ["context", "question"],
                                "data": [[ROWS["context"][0], ROWS["question"][0]], ["kiwi: 11111.", "What is kiwi?"]]},
            "params": {"ratio": 2, "max_new_tokens": 4}})
        assert status == 200, body
        assert len(body["predictions"]) == 2 and all(isinstance(p, str) for p in body["predictions"])
        status, body = _post(url + "/invocations", {"dataframe_split": {"columns": ["text"], "data": [["x"]]}})
        assert status >= 400 and "question" in json.dumps(body)
    finally:
        _stop(proc)


@pytest.mark.parametrize("recipe,args,message", [
    (RAM, ["--data.kind", "text"], "trains on question-answer samples"),
    (COMI, ["--compression.encoder_layers", "3"], "encoder_layers=3 exceeds"),
    (RAM, ["--compression.keep_fraction", "2"], "keep_fraction"),
])
def test_bad_settings_exit_2_before_ray_starts(tmp_path, recipe, args, message):
    run = run_recipe(tmp_path, *args, recipe=recipe, fast=["--preset", "tiny"], timeout=120)
    assert run.returncode == 2, run.stdout[-3000:]
    assert message in run.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()
