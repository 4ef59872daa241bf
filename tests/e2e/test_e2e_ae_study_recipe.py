"""End to end: the autoencoder study's tiny preset pretrains its LMs, pairs them into autoencoders,
registers every stage's model and logs the correlations, plots and table to one parent MLflow run;
the registered autoencoder reconstructs texts; a resumed run skips every finished stage."""

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from page_commands import shown
from recipe_runs import recipe_env, run_recipe

pytestmark = pytest.mark.timeout(900)

# test speed: few steps per stage, few held-out texts per corpus
SPEED = ["--max-steps", "12", "--autoencoder.eval_samples", "6", "--launch.checkpoint_every_n_steps", "12"]
CORPORA = ("austen", "markov")
PAIRS = [f"{e}-{d}" for e in CORPORA for d in CORPORA]


def _summary(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and '"correlations"' in line:
            return json.loads(line)
    raise AssertionError(stdout[-3000:])


def test_ae_study_tiny_runs_registers_every_stage_and_resumes(tmp_path):
    command = shown("python recipes/ae_study.py --preset tiny", "recipes/ae_study.md")
    run = run_recipe(tmp_path, *SPEED, command=command)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "registered model: models:/ae-study-tiny-ae-austen-austen@champion" in run.stdout
    summary = _summary(run.stdout)
    parent = run.run_id
    assert summary["parent_run_id"] == parent
    for where in ("pooled", "austen->austen", "markov->austen"):
        for side in ("encoder", "decoder"):
            assert set(summary["correlations"][where][side]) == {"rho", "p", "n"}
    assert summary["correlations"]["pooled"]["encoder"]["n"] == 4 * 2 * 6
    assert set(summary["alignment"]) == {"aligned", "misaligned"}
    assert summary["pairs"]["austen->markov"]["aligned"] is False

    client = MlflowClient(run.tracking_uri)
    info = client.get_run(parent)
    assert info.info.status == "FINISHED" and info.data.tags["longctx.stages"] == "1"
    metrics = info.data.metrics
    assert {"aligned/f1", "misaligned/f1", "pair/austen_to_markov/bleu"} <= set(metrics)
    assert any(k.startswith("spearman/encoder_entropy_vs_f1/pooled/") for k in metrics)
    artifacts = {a.path for a in client.list_artifacts(parent, "ae_study")}
    assert {f"ae_study/{n}" for n in ("scatter_encoder.png", "scatter_decoder.png", "alignment.md",
                                      "ae_study.json")} <= artifacts

    children = client.search_runs([info.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    stages = {c.data.tags["longctx.stage"].split("/", 1)[1]: c for c in children}
    assert set(stages) == {f"lm-{c}" for c in CORPORA} | {f"ae-{p}" for p in PAIRS}
    assert all(c.info.status == "FINISHED" for c in children)
    for pair in PAIRS:
        assert {"val/f1", "val/bleu", "val/rouge_l", "train/loss"} <= set(stages[f"ae-{pair}"].data.metrics)
    assert stages["ae-austen-markov"].data.params["autoencoder.decoder"].startswith("models:/ae-study-tiny-lm-markov/")
    assert stages["lm-markov"].data.params["data.kind"] == "entropy_text"
    names = {m.name for m in client.search_registered_models()}
    assert names == {f"ae-study-tiny-lm-{c}" for c in CORPORA} | {f"ae-study-tiny-ae-{p}" for p in PAIRS}

    code = ("import json, mlflow; m = mlflow.pyfunc.load_model('models:/ae-study-tiny-ae-markov-markov@champion'); "
            "print(json.dumps(m.predict(['the house was quiet and the garden was green'])))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**recipe_env(), "MLFLOW_TRACKING_URI": run.tracking_uri})
    assert out.returncode == 0, out.stderr[-3000:]
    texts = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(texts) == 1 and isinstance(texts[0], str)

    resume = shown("python recipes/ae_study.py --preset tiny --resume auto", "recipes/ae_study.md")
    again = run_recipe(tmp_path, *SPEED, command=resume)
    assert again.returncode == 0, again.stdout[-5000:]
    assert f"resuming the jobs of MLflow run {parent}" in again.stdout
    assert again.stdout.count("finished before") == len(stages), again.stdout[-3000:]
    assert "worker group" not in again.stdout   # no training ran
    assert len(client.search_runs([info.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")) == len(stages)
    assert client.get_run(parent).info.status == "FINISHED"
