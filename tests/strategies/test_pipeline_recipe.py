"""recipes/comet_128k_pipeline.py: the paper preset, the pre-launch checks, and the tiny run of its page on 4 Ray workers."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from page_commands import shown

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "comet_128k_pipeline.py"


def _run(*args, cwd, timeout=420, command=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([*(command or [sys.executable, str(RECIPE)]), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


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


def test_pipeline_recipe_runs_a_two_by_two_mesh_on_four_ray_workers(tmp_path):
    """pipeline_size 2 over 4 workers: 2 pipeline groups, each its own data replica (the page's second command,
    which is its first with the mesh flags added)."""
    mesh = shown("python recipes/comet_128k_pipeline.py --preset tiny --num-workers 4 --launch.pipeline_size 2 "
                 "--launch.cpus_per_worker 0.5", "recipes/comet_128k_pipeline.md")
    out = _run("--data.batch_size", "2", "--max-steps", "2", "--launch.checkpoint_every_n_steps", "2", cwd=tmp_path,
               command=mesh)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "worker group of 4 starting from scratch" in log
    assert "finished 2 steps" in log
    assert re.search(r"metrics=\{'step': 2, 'final': True, 'loss': [0-9.]+", log)
    # 2 steps x 2 replicas x batch 2 = 8 samples consumed, recorded in the final checkpoint's manifest
    manifests = list((tmp_path / "outputs").rglob("manifest.json")) + list((tmp_path / "mlartifacts").rglob("manifest.json"))
    assert manifests
    assert {json.loads(m.read_text())["data"]["samples_consumed"] for m in manifests} == {8}


def test_pipeline_size_that_does_not_divide_the_workers_is_refused_before_starting(tmp_path):
    out = _run("--preset", "tiny", "--num-workers", "4", "--launch.pipeline_size", "3", cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "pipeline_size=3 does not divide 4 ranks" in out.stderr and "Fix" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()
