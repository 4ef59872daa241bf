"""recipes/comet_128k_pipeline.py: the paper preset, the pre-launch check, and a tiny run on 2 Ray workers."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "comet_128k_pipeline.py"


def _run(*args, cwd, timeout=420):
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(RECIPE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_pipeline_recipe_paper_preset_is_the_128k_setting(tmp_path):
    out = _run("--help-config", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    for line in ('--launch.strategy "pipeline"', "--data.seq_len 131072", "--comet.chunk_size 2048",
                 "--launch.num_workers 16", "--comet.global_mem_size 512", "--comet.temp_budget 2048"):
        assert line in out.stdout


def test_pipeline_recipe_rejects_uneven_chunks_before_starting(tmp_path):
    out = _run("--preset", "tiny", "--data.seq_len", "320", cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "5 chunks do not split evenly over 2 pipeline ranks" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing started


def test_pipeline_recipe_tiny_trains_on_two_ray_workers(tmp_path):
    out = _run("--preset", "tiny", "--max-steps", "2", "--launch.checkpoint_every_n_steps", "2", cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "finished 2 steps" in log
    assert re.search(r"metrics=\{'step': 2, 'final': True, 'loss': [0-9.]+", log)
