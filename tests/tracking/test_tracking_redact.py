"""Credentials in the job config (storage_options, a user:password / ?token= URI) reach neither MLflow nor stdout.

The MLflow store is a real SQLite store under tmp_path; the run params are logged by the launcher's own
code (``_open_run``), and the registered model by ``log_and_register``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from framework.tracking.redact import REDACTED, is_secret_key, redact, redact_text

REPO = Path(__file__).resolve().parents[2]
SECRETS = ("AKIA-KEY-0042", "S3CR3T-0042", "SESSION-0042", "HUNTER2-0042", "QUERYTOKEN-0042", "PATHTOKEN-0042")
CRED_URI = "https://bob:HUNTER2-0042@mlflow.example:5000/?token=QUERYTOKEN-0042"
OPTIONS = {"path": "s3://bucket/train.jsonl?X-Amz-Security-Token=PATHTOKEN-0042",
           "storage_options": {"key": "AKIA-KEY-0042", "secret": "S3CR3T-0042", "anon": False,
                               "client_kwargs": {"aws_session_token": "SESSION-0042", "region_name": "eu-west-1"}}}


def _no_secret(text: str, where: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} shows {leaked}:\n{text[:3000]}"


def _recipe():
    spec = importlib.util.spec_from_file_location("comet_32k_recipe", REPO / "recipes" / "comet_32k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _secret_cfg():
    cfg = _recipe().tiny()
    cfg.data.options = {**cfg.data.options, **OPTIONS}
    cfg.tracking.tracking_uri = CRED_URI
    return cfg


def test_what_counts_as_a_secret():
    for key in ("key", "secret", "token", "password", "access_key", "aws_secret_access_key", "aws_access_key_id",
                "sas_token", "account_key", "connection_string", "Authorization", "apiKey", "client_secret"):
        assert is_secret_key(key), key
    for key in ("tokenizer", "max_new_tokens", "pad_token_id", "text_key", "keys", "passkey", "path", "seq_len",
                "shard_tokens", "region_name", "anon"):
        assert not is_secret_key(key), key
    assert redact_text(CRED_URI) == f"https://{REDACTED}@mlflow.example:5000/?token={REDACTED}"
    assert redact_text("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"
    assert redact_text("MLFLOW_TRACKING_TOKEN=abc python x.py --data.text_key=body") == \
        f"MLFLOW_TRACKING_TOKEN={REDACTED} python x.py --data.text_key=body"
    out = redact(OPTIONS)
    assert out["storage_options"]["key"] == REDACTED and out["storage_options"]["anon"] is False
    assert out["storage_options"]["client_kwargs"] == {"aws_session_token": REDACTED, "region_name": "eu-west-1"}
    assert OPTIONS["storage_options"]["key"] == "AKIA-KEY-0042", "redact() must not change the config it reads"


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> str:
    """A plain two-layer random Qwen3 causal LM saved with its tokenizer (the registry's causal-lm kind)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from data_pipelines.tokenizer import load_project_tokenizer

    directory = tmp_path_factory.mktemp("tiny_lm") / "model"
    tok = load_project_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    Qwen3ForCausalLM(cfg).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def test_secrets_reach_neither_run_params_nor_registered_model(mlflow_sqlite_tracking, tiny_lm_dir, tmp_path, capsys):
    from mlflow import MlflowClient

    from framework.launch.run import _open_run
    from framework.tracking.registry import log_and_register

    uri, _ = mlflow_sqlite_tracking
    cfg = _secret_cfg()
    client = MlflowClient(uri)
    run_id, _ = _open_run(cfg, client, uri, None)  # the launcher's own run creation and param logging

    params = client.get_run(run_id).data.params
    _no_secret(repr(params), "the MLflow run's params")
    assert params["tracking.tracking_uri"] == f"https://{REDACTED}@mlflow.example:5000/?token={REDACTED}"
    assert f'"key": "{REDACTED}"' in params["data.options"] and f'"secret": "{REDACTED}"' in params["data.options"]
    assert "eu-west-1" in params["data.options"], "non-secret options are kept"

    registered = log_and_register(tiny_lm_dir, registered_model_name="redact-test", run_id=run_id, max_new_tokens=2)
    logged = client.get_logged_model(registered.model_uri[len("models:/"):])
    _no_secret(repr(logged.params), "the registered model's params")
    assert REDACTED in logged.params["data.options"]
    saved = [p for p in (tmp_path / "mlflow").rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".txt", "")
             and p.name != "mlflow.db" and p.stat().st_size < 1 << 20]
    assert any(p.name == "MLmodel" for p in saved)
    for path in saved:
        _no_secret(path.read_text(errors="replace"), str(path))
    _no_secret(capsys.readouterr().out, "stdout")


def test_secrets_never_printed(capsys):
    """--help-config, the finished/how-to-load lines and a tracking error, through the recipe command line."""
    from framework.launch.recipe_cli import main
    from framework.launch.run import JobResult
    from framework.tracking.store import check_store

    presets = {"tiny": _secret_cfg}
    options = ["--data.options", '{"storage_options": {"key": "AKIA-KEY-0042", "secret": "S3CR3T-0042"}}']
    assert main(presets, "tiny", "t", argv=["--help-config", *options]) == 0
    out = capsys.readouterr().out
    _no_secret(out, "--help-config")
    assert f"https://{REDACTED}@mlflow.example" in out and f'"secret": "{REDACTED}"' in out

    def finished(cfg, resume=None):
        return JobResult(run_id="0" * 32, tracking_uri=cfg.tracking.tracking_uri, steps=1,
                         registered_uri="models:/comet-32k-tiny@champion", registered_version="1", checkpoint_path=None)

    assert main(presets, "tiny", "t", argv=options, run=finished) == 0
    out = capsys.readouterr().out
    _no_secret(out, "the finished lines")
    assert f"MLFLOW_TRACKING_URI=https://{REDACTED}@mlflow.example" in out

    def unreachable(cfg, resume=None):  # the real store check, on a credentialed URI nothing listens at
        check_store("https://bob:HUNTER2-0042@127.0.0.1:9/?token=QUERYTOKEN-0042", timeout_s=2)

    assert main(presets, "tiny", "t", argv=options, run=unreachable) == 2
    captured = capsys.readouterr()
    _no_secret(captured.out + captured.err, "the tracking error")
    assert "unreachable" in captured.err and REDACTED in captured.err and "Traceback" not in captured.err
