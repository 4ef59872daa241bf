"""framework.eval.heldout_lm: the `heldout_lm` evaluation on a tiny random CoMeT model: held-out windows of the
novels, the eval/lm/* metrics and the summary that recipes/comet_smollm2_lm.py has always written."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from framework.config import ConfigError
from framework.eval.heldout_lm import held_out_documents, heldout_lm_report
from framework.job import BaseCompareEval, EvalConfig, HeldoutLMEval
from framework.methods.comet import CoMeTJob

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    from data_pipelines.tokenizer import load_project_tokenizer

    return load_project_tokenizer()


@pytest.fixture(scope="module")
def loaded(tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=96)
    cfg._attn_implementation = "sdpa"
    model = CoMeTForCausalLM.from_base(Qwen3ForCausalLM(cfg), CoMeTConfig(chunk_size=32, global_mem_size=2,
                                                                          temp_stride=8, temp_budget=8)).eval()
    return SimpleNamespace(model=model, tokenizer=tokenizer)


def test_held_out_windows_come_from_the_tail_the_training_never_reads(tokenizer):
    from framework.eval.perplexity import data_documents

    docs = held_out_documents(tokenizer, 64, 2, 0.2)
    assert len(docs) == 2 and all(len(ids) == 64 for ids, _ in docs)
    train = data_documents({"kind": "text", "seq_len": 64, "split": "train", "validation_fraction": 0.2},
                           tokenizer, 1)
    assert not torch.equal(torch.as_tensor(docs[0][0]), torch.as_tensor(train[0][0]))
    with pytest.raises(ConfigError, match=r"eval\.heldout_lm.*docs=100000.*Fix"):
        held_out_documents(tokenizer, 64, 100_000, 0.2)


def _job(tmp_path, base: bool) -> CoMeTJob:
    return CoMeTJob(eval=EvalConfig(tasks=["heldout_lm"], out_dir=str(tmp_path), summary_file="lm.json",
                                    heldout_lm=HeldoutLMEval(lengths=[64, 128], docs=1),
                                    base=BaseCompareEval(enabled=base)))


def test_heldout_lm_report_writes_the_recipes_summary_and_metrics(tmp_path, loaded, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # no active run: nothing is logged
    job = _job(tmp_path, base=True)
    got = heldout_lm_report(job, loaded, "models:/m/1", str(tmp_path), "lm.json")
    # the base model's max_position_embeddings (96) stops its full-attention pass at 128 tokens
    assert set(got["metrics"]) == {"eval/lm/comet_ppl_64", "eval/lm/base_window_ppl_64", "eval/lm/base_full_ppl_64",
                                   "eval/lm/comet_ppl_128", "eval/lm/base_window_ppl_128"}
    assert got["file"] == os.path.join(str(tmp_path), "lm.json")
    summary = json.loads(open(got["file"]).read())
    assert set(summary) == {"model", "base", "held_out_fraction", "lengths", "docs_per_length", "table", "by_length"}
    assert summary["model"] == "models:/m/1" and summary["lengths"] == [64, 128] and summary["docs_per_length"] == 1
    assert summary["held_out_fraction"] == 0.2
    assert [row["length"] for row in summary["table"]] == [64, 128]
    assert summary["table"][0]["comet_ppl"] == pytest.approx(got["metrics"]["eval/lm/comet_ppl_64"])
    assert summary["table"][1]["base_full_ppl"] is None
    assert summary["by_length"]["128"]["base_full"]["status"].startswith("not run")
    assert summary["by_length"]["64"]["ratios"]["comet_over_base_window"]["overall"] > 0


def test_without_the_base_comparison_only_comet_is_scored(tmp_path, loaded, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    got = heldout_lm_report(_job(tmp_path, base=False), loaded, "models:/m/1", str(tmp_path), "lm.json")
    assert set(got["metrics"]) == {"eval/lm/comet_ppl_64", "eval/lm/comet_ppl_128"}
    report = got["summary"]["by_length"]["64"]
    assert report["base_window"]["status"].startswith("not run") and report["ratios"]["comet_over_base_window"] is None


@pytest.mark.parametrize("tasks", [["heldout_lm"], ["heldout_lm", "perplexity"]])
def test_run_evaluations_runs_heldout_lm_alone_or_beside_others(tmp_path, loaded, monkeypatch, capsys, tasks):
    import mlflow

    from framework.eval import after_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    monkeypatch.setattr("framework.eval.model_uri.load_model", lambda *_a, **_k: loaded)
    alone = tasks == ["heldout_lm"]
    job = _job(tmp_path, base=alone)  # beside perplexity, base.enabled would load model.base (here none)
    job.eval.tasks, job.eval.perplexity.lengths = tasks, [64]
    result = SimpleNamespace(pinned_model_uri="models:/m/1", tracking_uri=uri, run_id=run_id)
    printed = after_training.run_evaluations(job, result)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == printed
    metrics = client.get_run(run_id).data.metrics
    assert {"eval/lm/comet_ppl_64", "eval/lm/comet_ppl_128"} <= set(metrics)
    if alone:
        assert {"eval/lm/base_window_ppl_128", "eval/lm/base_full_ppl_64"} <= set(metrics)
        assert set(printed) == {"model", "mlflow_run_id", "table", "file"} and printed["mlflow_run_id"] == run_id
        assert printed["file"] == str(tmp_path / "lm.json") and [r["length"] for r in printed["table"]] == [64, 128]
    else:  # the combined summary (lm.json) holds the held-out one, written beside it
        assert printed["heldout_lm"]["file"] == str(tmp_path / "heldout_lm.json")
        assert os.path.isfile(tmp_path / "lm.json") and "eval/comet/ppl_64" in metrics
