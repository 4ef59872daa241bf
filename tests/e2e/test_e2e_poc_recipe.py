"""End to end: the PoC recipe trains a COMI, measures and caches its retention labels, trains the
context-aware predictor on Ray, compares it with the mean retention curve under one parent MLflow
run, registers the predictor, and `longctx compress` picks a ratio per input with it."""

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from page_commands import shown
from recipe_runs import recipe_env, run_recipe

pytestmark = pytest.mark.timeout(900)
# test speed: 4 steps per training stage, 48 contexts of 64-128 tokens
LABEL_DATA = json.dumps({"kind": "qa_facts", "seq_len": 128, "min_seq_len": 64, "num_samples": 48, "seed": 777})
SPEED = ["--max-steps", "4", "--data.seq_len", "128", "--compressor.data.seq_len", "128",
         "--labels.data", LABEL_DATA, "--labels.shards", "1"]


def test_the_tiny_poc_recipe_labels_trains_compares_registers_and_compresses(tmp_path):
    run = run_recipe(tmp_path, *SPEED, command=shown("python recipes/poc_predictor.py --preset tiny",
                                                     "recipes/poc_predictor.md"))
    assert run.returncode == 0, run.stdout[-5000:]
    assert "registered model: models:/poc-predictor-tiny@champion (version 1)" in run.stdout
    summary = json.loads(next(line for line in run.stdout.splitlines() if line.startswith('{"ppe"')))
    assert set(summary["ppe"]) == {"context_aware", "context_agnostic"}
    assert summary["grid"] == [0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]
    assert summary["contexts"] == {"train": 38, "held_out": 10} and not summary["labels"]["reused"]

    client = MlflowClient(run.tracking_uri)
    parent = client.get_run(run.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["longctx.stages"] == "1"
    for key in ("compare/ppe/context_aware", "compare/ppe/context_agnostic", "compare/p_at_r/context_aware",
                "compare/p_at_r/context_agnostic"):
        assert key in parent.data.metrics, key
    assert parent.data.tags["longctx.poc.labels_key"] == summary["labels"]["key"]
    assert parent.data.tags["longctx.poc.compressor"] == "models:/poc-compressor-tiny/1"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.run_id}'")
    stages = sorted(c.data.tags["longctx.stage"].split("/")[1] for c in children)
    assert stages == ["compressor", "predictor"]
    predictor = next(c for c in children if c.data.tags["longctx.stage"].endswith("/predictor"))
    assert predictor.data.params["data.kind"] == "poc_labels"
    assert len(client.get_metric_history(predictor.info.run_id, "train/ppe")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.run_id, "poc")}
    assert artifacts == {"poc/comparison.json", "poc/comparison.png"}

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps({"context": "pear: 41907. plum: 22815. fig: 30501.",
                                  "question": "What is the value of plum?"}) + "\n"
                      + json.dumps({"input": "amber: 11111. cedar: 22222."}) + "\n")
    # docs/recipes/poc_predictor.md's compress command, as `python -m framework.cli` (the same entry point)
    compress = shown("longctx compress --model models:/poc-predictor-tiny@champion --floor 0.9 inputs.jsonl",
                     "recipes/poc_predictor.md")
    done = subprocess.run([sys.executable, "-m", "framework.cli", *compress[1:], "--tracking-uri", run.tracking_uri],
                          cwd=tmp_path, env=recipe_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert len(lines) == 2 and "answer" in lines[0] and "answer" not in lines[1]
    assert all(line["predicted_retention"] >= 0.9 or line["ratio"] == 1.0 for line in lines)

