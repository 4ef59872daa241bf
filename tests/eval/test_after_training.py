"""framework.eval.after_training: the base model's side of the `eval` section (full attention, the lengths past
eval.base.max_len marked), on SmolLM2 when it is converted here."""

import os

import pytest

SMOLLM2 = os.path.expanduser(os.environ.get("SMOLLM2_DIR", "~/.cache/longctx/smollm2-135m-instruct"))


@pytest.mark.skipif(not os.path.isfile(os.path.join(SMOLLM2, "config.json")),
                    reason="SmolLM2 is not converted here (bash cluster/setup_smollm2.sh)")
def test_base_evaluation_runs_up_to_max_len_and_marks_the_rest(tmp_path):
    import torch

    from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER
    from framework.eval.after_training import base_evaluation
    from framework.job import BaseCompareEval, BaseModelConfig, EvalConfig, PasskeyEval, PerplexityEval, TrainJob

    job = TrainJob(model=BaseModelConfig(base=SMOLLM2),
                   eval=EvalConfig(tasks=["passkey", "perplexity"], out_dir=str(tmp_path),
                                   passkey=PasskeyEval(lengths=[128, 256], depths=[0.5], trials=1, digits=5),
                                   perplexity=PerplexityEval(docs=1), base=BaseCompareEval(enabled=True, max_len=128)))
    got = base_evaluation(job, [128, 256], [128, 256], PASSKEY_REPEAT_FILLER, torch.device("cpu"))
    summary = got["summary"]
    assert summary["status"]["128"] == "ok"
    assert summary["status"]["256"].startswith("not run: beyond --base-max-len 128")
    assert set(summary["perplexity"]) == {"128"} and summary["perplexity"]["128"] > 1
    assert set(summary["passkey"]["accuracy"]) == {"128"}
    assert os.path.isfile(tmp_path / "base" / "passkey.json") and len(got["files"]) == 2
