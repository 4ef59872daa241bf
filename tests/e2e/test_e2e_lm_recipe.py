"""recipes/comet_smollm2_lm.py end to end with its tiny preset: train CoMeT with a frozen backbone on the novels'
training split, register, then compare the registered model with its base model on held-out windows."""

import json
import subprocess

import mlflow
from page_commands import shown
from recipe_runs import recipe_env

PAGE = "recipes/comet_smollm2_lm.md"


def test_lm_recipe_trains_memory_only_registers_and_compares_with_the_base(tmp_path):
    # the evaluation is the preset's eval section (tasks: [heldout_lm]); --eval-out is the old flag of
    # --eval.out_dir, still accepted with a deprecation line
    proc = subprocess.run(
        [*shown("python recipes/comet_smollm2_lm.py --preset tiny", PAGE), "--max-steps", "3",
         "--launch.cpus_per_worker", "1", "--eval-out", str(tmp_path / "eval")],
        cwd=tmp_path, env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "optim.backbone=frozen" in proc.stdout + proc.stderr
    assert "deprecated: --eval-out" in proc.stderr and "--eval.out_dir" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"].startswith("models:/comet-lm-tiny/")
    assert [row["length"] for row in summary["table"]] == [512, 1024]
    for row in summary["table"]:
        assert all(row[k] > 1 for k in ("comet_ppl", "base_window_ppl", "base_full_ppl"))
    assert summary["file"] == str(tmp_path / "eval" / "smollm2_lm.json")
    full = json.loads(open(summary["file"]).read())
    assert full["by_length"]["512"]["ratios"]["comet_over_base_window"]["overall"] > 0
    assert full["held_out_fraction"] == 0.2 and full["docs_per_length"] == 1 and full["lengths"] == [512, 1024]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["optim.backbone"] == '"frozen"' or run.data.params["optim.backbone"] == "frozen"
    assert run.data.params["data.kind"].strip('"') == "text"
    assert {"eval/lm/comet_ppl_512", "eval/lm/base_window_ppl_1024", "eval/lm/base_full_ppl_512"} <= set(
        run.data.metrics)
    assert "eval/lm/smollm2_lm.json" in [f.path for f in client.list_artifacts(run.info.run_id, "eval/lm")]
