"""``longctx merge``: to a folder, to an MLflow registry (SQLite store under tmp_path) and back, from
registered inputs, and its errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from merging_helpers import state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
               "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _restore_mlflow_globals(monkeypatch):
    for key in _MLFLOW_ENV:
        monkeypatch.delenv(key, raising=False)
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _cli(argv, capsys):
    from framework import cli

    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_merge_to_a_folder(tiny_models, tmp_path, capsys):
    out = tmp_path / "merged"
    code, stdout, err = _cli(["merge", "--base", tiny_models["base"], tiny_models["a"], tiny_models["b"],
                              "--method", "ties", "--density", "0.5", "--lambda", "0.8", "--out", str(out)], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "ties" and summary["density"] == 0.5 and summary["lambda"] == 0.8
    from transformers import AutoModelForCausalLM

    from framework.merging import MergeSpec, merge_folders

    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    merge_folders(tiny_models["base"], [tiny_models["a"], tiny_models["b"]], str(tmp_path / "api"),
                  MergeSpec("ties", density=0.5, lam=0.8))
    for name, tensor in state_dict(tmp_path / "api").items():
        assert torch.equal(merged[name], tensor), name


def test_merge_to_the_registry_and_back(tiny_models, tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, stdout, err = _cli(["merge", "--base", tiny_models["base"], tiny_models["a"], tiny_models["b"],
                              "--method", "nan+task_arithmetic", "--out", "models:/merged-tiny",
                              "--tracking-uri", uri], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["registered"] == "models:/merged-tiny@champion" and summary["version"] == "1"
    assert "registered model: models:/merged-tiny@champion (version 1)" in err
    # the run holds the method, the inputs and the coefficients as params
    run = mlflow.MlflowClient(uri).get_run(summary["run_id"])
    params = run.data.params
    assert params["method"] == "nan+task_arithmetic" and params["model_0"] == tiny_models["a"]
    assert float(params["weight_0"]) + float(params["weight_1"]) == pytest.approx(1.0, abs=1e-5)
    assert float(params["nan_norms_0"]) > 0
    # the registered version loads back, through the same resolver as every --model
    from framework.eval.model_uri import resolve_model_dir
    from transformers import AutoModelForCausalLM

    local = resolve_model_dir("models:/merged-tiny@champion", uri, scratch=str(tmp_path / "dl"))
    loaded = AutoModelForCausalLM.from_pretrained(local).state_dict()
    base, a, b = (state_dict(tiny_models[k]) for k in ("base", "a", "b"))
    w = summary["weights"]
    for name in base:
        expected = base[name] + w[0] * (a[name] - base[name]) + w[1] * (b[name] - base[name])
        torch.testing.assert_close(loaded[name], expected, atol=1e-6, rtol=0)

    # a registered model is an input like a folder: merging it with the base at lambda 1 reproduces it
    code, stdout, err = _cli(["merge", "--base", tiny_models["base"], "models:/merged-tiny@champion",
                              "--method", "task_arithmetic", "--out", str(tmp_path / "again"),
                              "--tracking-uri", uri], capsys)
    assert code == 0, err
    again = state_dict(tmp_path / "again")
    for name in base:
        torch.testing.assert_close(again[name], loaded[name], atol=1e-6, rtol=0)


def test_unknown_method_is_refused_by_the_parser(tiny_models, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _cli(["merge", "--base", tiny_models["base"], tiny_models["a"], "--method", "slerp",
              "--out", str(tmp_path / "o")], capsys)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'slerp'" in err and "ties" in err


@pytest.mark.parametrize("case", ["missing_model", "missing_registered", "bad_out", "bad_density", "weights"])
def test_bad_inputs_exit_2_with_the_fix(case, tiny_models, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["merge", "--base", tiny_models["base"], "--tracking-uri", uri]
    argv, words = {
        "missing_model": (base + [str(tmp_path / "nope"), "--method", "ties", "--out", str(tmp_path / "o")],
                          ["model 0", "no such directory", "Fix:"]),
        "missing_registered": (base + ["models:/never-registered@champion", "--method", "ties",
                                       "--out", str(tmp_path / "o")], ["model 0", "could not fetch", "Fix:"]),
        "bad_out": (base + [tiny_models["a"], "--method", "ties", "--out", "models:/name@alias"],
                    ["models:/<name>", "Fix:"]),
        "bad_density": (base + [tiny_models["a"], "--method", "dare", "--density", "0", "--out", str(tmp_path / "o")],
                        ["density=0.0", "Fix:"]),
        "weights": (base + [tiny_models["a"], tiny_models["b"], "--method", "task_arithmetic", "--weights", "1",
                            "--out", str(tmp_path / "o")], ["1 weights for 2 models", "Fix:"]),
    }[case]
    code, stdout, err = _cli(argv, capsys)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines()[-1].startswith("longctx: error:") and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not os.path.exists(tmp_path / "o" / "model.safetensors")


def test_hi_merging_from_the_command_line(tiny_models, calibration_file, tmp_path, capsys):
    out = tmp_path / "hi"
    code, stdout, err = _cli(["merge", "--base", tiny_models["base"], tiny_models["a"], tiny_models["b"],
                              "--method", "hi_merging", "--calibration", calibration_file, "--hi-iterations", "1",
                              "--out", str(out)], capsys)
    assert code == 0, err
    assert "hi_merging: round 0 model-wise" in err and "hi_merging: round 1" not in err
    report = json.loads((out / "merge_report.json").read_text())
    assert report["base"] == tiny_models["base"] and report["models"] == [tiny_models["a"], tiny_models["b"]]
    c = report["coefficients"]
    assert c["hi_calibration_loss"] <= c["hi_calibration_loss_start"]
    from framework.merging.merge import MergeReport

    params = MergeReport(**report).params()  # what a registered merge logs
    assert params["hi_alpha_0"] == f"{c['hi_alpha'][0]:.6g}" and "hi_beta_1_layer.0" in params
    code, _, err = _cli(["merge", "--base", tiny_models["base"], tiny_models["a"], "--method", "hi_merging",
                         "--out", str(tmp_path / "no-calibration")], capsys)
    assert code == 2 and "--calibration FILE.jsonl" in err
