"""End to end: SWAT pretraining and the full/sliding baselines run on real Ray and MLflow like CoMeT,
and what they register loads through MLflow's pyfunc and through transformers' Auto classes."""

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from page_commands import shown
from recipe_runs import ROOT, recipe_env, run_recipe

pytestmark = pytest.mark.timeout(900)

SWAT = ROOT / "recipes" / "swat_pretrain.py"
BASELINE = ROOT / "recipes" / "baseline_finetune.py"
TINY = ["--preset", "tiny", "--launch.checkpoint_every_n_steps", "2"]
SPEED = TINY[2:]


def _python(cwd, tracking_uri, code):
    env = {**recipe_env(), "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


LOAD_BOTH = """
import json, mlflow, torch
import framework.models.swat
from transformers import AutoModelForCausalLM, AutoTokenizer
path = mlflow.artifacts.download_artifacts("{uri}")
import os
model_dir = os.path.join(path, "artifacts", "model")
model = AutoModelForCausalLM.from_pretrained(model_dir)
tok = AutoTokenizer.from_pretrained(model_dir)
ids = tok("It is a truth universally acknowledged", return_tensors="pt")["input_ids"]
loss = model(input_ids=ids, labels=ids).loss.item()
text = mlflow.pyfunc.load_model("{uri}").predict(["It is a truth"], params={{"max_new_tokens": 5}})
print(json.dumps({{"type": model.config.model_type, "window": getattr(model.config, "sliding_window", None),
                  "config": model.config.to_dict(), "loss": loss, "text": text, "files": sorted(os.listdir(model_dir))}}))
"""


def test_swat_pretrain_on_two_workers_registers_a_swat_model_and_resumes(tmp_path):
    # docs/recipes/swat_pretrain.md's ablation command (no ALiBi slopes) starts with its plain tiny command
    swat = shown("python recipes/swat_pretrain.py --preset tiny --swat.slopes none", "recipes/swat_pretrain.md")
    run = run_recipe(tmp_path, *SPEED, "--num-workers", "2", "--max-steps", "4", command=swat)
    assert run.returncode == 0, run.stdout[-5000:]
    client = MlflowClient(run.tracking_uri)
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED"
    assert info.data.params["swat.window"] == "32" and info.data.params["swat.slopes"] == "none"
    assert info.data.params["data.kind"] == "text"
    losses = [m.value for m in client.get_metric_history(run.run_id, "train/loss")]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
    assert "registered model: models:/swat-tiny@champion (version 1)" in run.stdout

    got = _python(tmp_path, run.tracking_uri, LOAD_BOTH.format(uri="models:/swat-tiny@champion"))
    assert got["type"] == "swat" and got["config"]["window"] == 32 and got["config"]["normalization"] == "sigmoid"
    assert "model.safetensors" in got["files"] and not any(f.endswith((".bin", ".pt", ".pkl")) for f in got["files"])
    assert 0 < got["loss"] < 10 and isinstance(got["text"][0], str)

    resumed = run_recipe(tmp_path, *SPEED, "--num-workers", "2", "--max-steps", "6", "--resume", f"runs:/{run.run_id}",
                         command=swat)
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert resumed.run_id == run.run_id
    assert [m.step for m in client.get_metric_history(run.run_id, "train/loss")] == list(range(6))
    assert str(client.get_model_version_by_alias("swat-tiny", "champion").version) == "2"


def test_sliding_baseline_on_a_llama_base_saves_a_windowed_model(tmp_path):
    sliding = shown("python recipes/baseline_finetune.py --preset tiny --attention sliding --attention.window 64",
                    "recipes/baseline_finetune.md")
    run = run_recipe(tmp_path, *SPEED, "--model.base", "random:llama", "--max-steps", "3", command=sliding)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "registered model: models:/baseline-tiny-sliding@champion (version 1)" in run.stdout
    client = MlflowClient(run.tracking_uri)
    params = client.get_run(run.run_id).data.params
    assert params["attention.kind"] == "sliding" and params["attention.window"] == "64"
    assert client.get_run(run.run_id).info.run_name == "baseline_finetune-tiny-sliding"
    got = _python(tmp_path, run.tracking_uri, LOAD_BOTH.format(uri="models:/baseline-tiny-sliding@champion"))
    # Llama weights run as the identical Mistral architecture, whose attention honours the window
    assert got["type"] == "mistral" and got["window"] == 64
    assert 0 < got["loss"] < 10 and isinstance(got["text"][0], str)


def test_full_attention_baseline_registers_a_full_attention_model(tmp_path):
    full = shown("python recipes/baseline_finetune.py --preset tiny --attention full", "recipes/baseline_finetune.md")
    run = run_recipe(tmp_path, *SPEED, "--max-steps", "2", command=full)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "registered model: models:/baseline-tiny-full@champion (version 1)" in run.stdout
    assert MlflowClient(run.tracking_uri).get_run(run.run_id).data.params["attention.kind"] == "full"
    got = _python(tmp_path, run.tracking_uri, LOAD_BOTH.format(uri="models:/baseline-tiny-full@champion"))
    assert got["type"] == "qwen3" and not got["config"].get("use_sliding_window")
    assert 0 < got["loss"] < 10 and isinstance(got["text"][0], str)


@pytest.mark.parametrize("recipe, args, message", [
    (SWAT, ["--swat.num_attention_heads", "3", "--swat.hidden_size", "96"], "balanced.*Fix"),
    (SWAT, ["--launch.strategy", "pipeline"], "pipeline.*'swat'.*Fix: --launch.strategy ddp"),
    (SWAT, ["--model.arch", '{"hidden_size": 64}'], "does not shape a SWAT model.*--swat"),
    (BASELINE, ["--attention.window", "0"], "attention.window=0.*Fix"),
    (BASELINE, ["--attention", "sliding", "--model.arch", "{}", "--model.base", "./nonexistent/model"],
     "model.base='./nonexistent/model': no such directory.*Fix"),
])
def test_bad_settings_exit_2_with_the_fix_before_training(tmp_path, recipe, args, message):
    import re

    proc = subprocess.run([sys.executable, str(recipe), "--preset", "tiny", *args], cwd=tmp_path, env=recipe_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
