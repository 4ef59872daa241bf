"""recipes/comet_passkey_tiny.py end to end on a few steps: train on Ray, register, evaluate the registered
model at multiples of the training length, log accuracy and heat-map to the training run."""

import json
import subprocess
import sys

import mlflow
import pytest
from page_commands import shown
from recipe_runs import ROOT, recipe_env

RECIPE = ROOT / "recipes" / "comet_passkey_tiny.py"


def test_passkey_recipe_trains_registers_and_logs_the_evaluation(tmp_path):
    proc = subprocess.run(
        [*shown("python recipes/comet_passkey_tiny.py", "recipes/comet_passkey_tiny.md"), "--max-steps", "3", "--data.batch_size", "2", "--launch.cpus_per_worker", "1", "--eval.passkey.multiples", "2,3", "--eval.passkey.depths", "0,1",
         "--eval.passkey.trials", "2", "--eval.out_dir", str(tmp_path / "eval")],
        cwd=tmp_path, env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # the JSON summary is the last stdout line
    assert summary["train_len"] == 256 and summary["lengths"] == [512, 768]
    assert set(summary["accuracy"]) == {"512", "768"} and set(summary["by_depth"]) == {"0", "1"}
    assert summary["model"].startswith("models:/comet-passkey-tiny/")
    assert (tmp_path / "eval" / "passkey_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "eval" / "passkey.json").read_text())["accuracy"].keys() == {"512", "768"}

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["comet.global_gate"] == "learned"
    assert {"eval/passkey/acc_512", "eval/passkey/acc_768"} <= set(run.data.metrics)
    assert "train/loss" in run.data.metrics
    artifacts = [f.path for f in client.list_artifacts(run.info.run_id, "eval/passkey")]
    assert "eval/passkey/passkey_heatmap.png" in artifacts


def test_passkey_ablation_presets_change_only_the_memory_path(tmp_path):
    out = {}
    for preset in ("tiny", "no_gate", "no_temp", "no_repeats", "random_chunks"):
        proc = subprocess.run([sys.executable, str(RECIPE), "--preset", preset, "--help-config"], cwd=tmp_path,
                              env=recipe_env(), stdout=subprocess.PIPE, text=True, timeout=120)
        assert proc.returncode == 0
        out[preset] = dict(line[2:].split(" ", 1) for line in proc.stdout.splitlines() if line.startswith("--"))
    diff = lambda a, b: {k for k in out[a] if out[a][k] != out[b].get(k)}  # noqa: E731
    assert diff("tiny", "no_gate") == {"comet.global_gate", "comet.gate_repeat_max", "launch.run_name",
                                       "tracking.model_name"}
    assert out["tiny"]["comet.gate_repeat_max"].startswith("4096")
    assert diff("tiny", "no_temp") == {"comet.temp_stride", "comet.temp_budget", "launch.run_name", "tracking.model_name"}
    assert out["no_gate"]["comet.global_gate"].startswith('"overwrite"')
    assert diff("tiny", "no_repeats") == {"comet.gate_repeat_max", "launch.run_name", "tracking.model_name"}
    assert diff("tiny", "random_chunks") == {"data.options", "launch.max_steps", "launch.run_name", "tracking.model_name"}
    options = json.loads(out["random_chunks"]["data.options"].rsplit("  (", 1)[0])
    assert options["chunking"] == {"strategy": "random", "chunk_size": 32, "min_chunk": 4}


ABLATIONS = {  # preset: (its command on the page, a check of the logged params it changes)
    "no_gate": (lambda: shown("python recipes/comet_passkey_tiny.py --preset no_gate", "recipes/comet_passkey_tiny.md"),
                lambda params: params["comet.global_gate"] == "overwrite"),
    "no_temp": (lambda: shown("python recipes/comet_passkey_tiny.py --preset no_temp", "recipes/comet_passkey_tiny.md"),
                lambda params: params["comet.temp_budget"] == "0"),
    "no_repeats": (lambda: shown("python recipes/comet_passkey_tiny.py --preset no_repeats",
                                 "recipes/comet_passkey_tiny.md"),
                   lambda params: float(params["comet.gate_repeat_max"]) == 1.0),
    "random_chunks": (lambda: shown("python recipes/comet_passkey_tiny.py --preset random_chunks",
                                    "recipes/comet_passkey_tiny.md"),
                      lambda params: json.loads(params["data.options"])["chunking"]["strategy"] == "random"),
}


@pytest.mark.parametrize("preset", sorted(ABLATIONS))
def test_each_ablation_command_trains_registers_and_evaluates(tmp_path, preset):
    command, changed = ABLATIONS[preset]
    proc = subprocess.run(
        [*command(), "--max-steps", "1", "--data.batch_size", "2",
         # the old evaluation flags: deprecated aliases of --eval.passkey.multiples and the like
         "--launch.cpus_per_worker", "1", "--eval-multiples", "2", "--eval-depths", "1", "--eval-trials", "1",
         "--eval-out", str(tmp_path / "eval")],
        cwd=tmp_path, env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"].startswith(f"models:/comet-passkey-tiny-{preset.replace('_', '-')}/")
    params = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["mlflow_run_id"]).data.params
    assert changed(params), params


def test_bad_evaluation_flags_fail_before_training_starts(tmp_path):
    proc = subprocess.run([sys.executable, str(RECIPE), "--eval-multiples", "32,abc"], cwd=tmp_path, env=recipe_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--eval-multiples" in proc.stderr and "Fix" in proc.stderr and "Traceback" not in proc.stderr
    assert "eval.passkey.multiples" in proc.stderr  # the old flag's new name, in the deprecation line and the error
    assert not (tmp_path / "mlflow.db").exists()  # nothing started
