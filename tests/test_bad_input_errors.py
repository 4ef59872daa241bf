"""Bad input gets one clear line naming the cause and the fix, and a non-zero exit; never a traceback.

Cases: a YAML syntax error in a recipe's --config, binary input to ``longctx compress``, a JSON Lines
line over the line limit (``longctx data prepare`` and ``longctx compress``), ``--shard-tokens 0``,
a run or model name with a quote, and a registration error (the MLflow run ends FAILED)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from framework import cli

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "comet_32k.py"


def _tiny():
    spec = importlib.util.spec_from_file_location("comet_32k_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny


def _recipe_main(argv):
    from framework.launch.recipe_cli import main

    return main({"tiny": _tiny()}, "tiny", "test recipe", argv=argv)


def _one_clean_error(text: str) -> str:
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text
    return errors[0]


def test_yaml_syntax_error_in_config(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("data:\n  seq_len: [512,\n  batch_size: 2\nlaunch: {max_steps: 3\n")
    proc = subprocess.run([sys.executable, str(RECIPE), "--preset", "tiny", "--config", str(bad), "--help-config"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_clean_error(proc.stderr)
    assert f"--config {bad}:" in line and "not valid YAML" in line and "Fix:" in line


@pytest.mark.parametrize("body,cause", [("- just\n- a list\n", "not a mapping of config sections"),
                                        (b"\xff\xfe\x00binary", "not a UTF-8 text file")])
def test_config_that_is_not_a_mapping_or_not_text(tmp_path, capsys, body, cause):
    bad = tmp_path / "job.yaml"
    bad.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(SystemExit) as info:
        _recipe_main(["--config", str(bad), "--help-config"])
    assert info.value.code == 2
    line = _one_clean_error(capsys.readouterr().err)
    assert cause in line and "Fix:" in line


@pytest.mark.parametrize("blob", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",   # NUL bytes
                                  b"\xff\xd8\xff\xe0 JFIF \xc3\x28 bytes\n"])            # not UTF-8
def test_binary_input_to_compress(tmp_path, capsys, blob):
    path = tmp_path / "inputs.jsonl"
    path.write_bytes(blob)
    assert cli.main(["compress", "--model", str(tmp_path / "no-model"), "--floor", "0.9", str(path)]) == 2
    line = _one_clean_error(capsys.readouterr().err)
    assert f"{path}: line 1" in line and ("binary" in line or "not UTF-8" in line) and "Fix:" in line


def _jsonl_with_a_long_line(path: Path, long_chars: int) -> None:
    good = json.dumps({"text": "A good record of a few words.", "context": "pear: 1.", "question": "pear?"})
    path.write_text(good + "\n" + json.dumps({"text": "x" * long_chars, "context": "y" * long_chars}) + "\n"
                    + good + "\n")


def test_a_line_over_the_limit_is_a_bad_record_with_file_and_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LONGCTX_MAX_LINE_BYTES", "4096")
    src = tmp_path / "big.jsonl"
    _jsonl_with_a_long_line(src, 3 * 4096)
    rc = cli.main(["data", "prepare", str(src), "--out", str(tmp_path / "store"), "--no-progress"])
    assert rc == 2
    line = _one_clean_error(capsys.readouterr().err)
    assert f"{src}:2: line_too_long" in line and "LONGCTX_MAX_LINE_BYTES" in line and "--on-bad-record skip" in line

    rc = cli.main(["data", "prepare", str(src), "--out", str(tmp_path / "store"), "--no-progress",
                   "--on-bad-record", "skip"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 documents" in out and "line_too_long=1" in out

    assert cli.main(["compress", "--model", str(tmp_path / "no-model"), "--floor", "0.9", str(src)]) == 2
    line = _one_clean_error(capsys.readouterr().err)
    assert f"{src}: line 2" in line and "over 4,096 bytes" in line


def test_the_line_limit_defaults_to_64_mib_and_a_bad_limit_is_named(monkeypatch, tmp_path, capsys):
    from data_pipelines.sources import max_line_bytes

    monkeypatch.delenv("LONGCTX_MAX_LINE_BYTES", raising=False)
    assert max_line_bytes() == 64 << 20
    monkeypatch.setenv("LONGCTX_MAX_LINE_BYTES", "lots")
    src = tmp_path / "a.jsonl"
    src.write_text('{"context": "pear: 1."}\n')
    assert cli.main(["compress", "--model", str(tmp_path / "no-model"), "--floor", "0.9", str(src)]) == 2
    line = _one_clean_error(capsys.readouterr().err)
    assert "LONGCTX_MAX_LINE_BYTES='lots'" in line and "Fix:" in line


@pytest.mark.parametrize("value", ["0", "-5", "100"])
def test_shard_tokens_below_the_minimum(tmp_path, capsys, value):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "hello world"}\n')
    out = tmp_path / "store"
    assert cli.main(["data", "prepare", str(src), "--out", str(out), "--shard-tokens", value, "--no-progress"]) == 2
    line = _one_clean_error(capsys.readouterr().err)
    assert f"--shard-tokens {value}" in line and "at least 1024" in line and "Fix:" in line
    assert not out.exists(), "nothing is built with a rejected --shard-tokens"


@pytest.mark.parametrize("flags,field", [(["--run-name", "it's"], "launch.run_name"),
                                         (["--run-name", 'say "hi"'], "launch.run_name"),
                                         (["--model-name", "o'brien"], "tracking.model_name")])
def test_a_name_with_a_quote(capsys, flags, field):
    with pytest.raises(SystemExit) as info:
        _recipe_main([*flags, "--help-config"])
    assert info.value.code == 2
    line = _one_clean_error(capsys.readouterr().err)
    assert f"{field}=" in line and "Fix:" in line and ("\"'\"" in line or "'\"'" in line)


def test_a_registration_error_leaves_the_run_failed(tmp_path, capsys, monkeypatch):
    """Training finishes (Ray is replaced by a fake fit), then registering the model fails: exit 1 with
    one error line, and the MLflow run is FAILED, not RUNNING."""
    import contextlib

    from mlflow import MlflowClient

    import framework.launch.run as run_module
    from framework.launch.checkpointing import EXPORT_DIR

    checkpoint_dir = tmp_path / "ckpt"
    (checkpoint_dir / EXPORT_DIR).mkdir(parents=True)  # an exported model without its files: RegistryError

    checkpoint = types.SimpleNamespace(path=str(checkpoint_dir),
                                       as_directory=lambda: contextlib.nullcontext(str(checkpoint_dir)))
    monkeypatch.setattr(run_module, "_fit", lambda *a, **k: types.SimpleNamespace(checkpoint=checkpoint))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _recipe_main(["--tracking-uri", uri, "--run-name", "reg-fails"]) == 1
    line = _one_clean_error(capsys.readouterr().err)
    assert "registering the model failed" in line and "FAILED" in line and "--resume runs:/" in line
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("longctx").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
