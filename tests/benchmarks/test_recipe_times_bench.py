"""benchmarks/recipe_times.py without a recipe: its flags, one timed fake command (steps, registered model,
environment, working directory), the JSON it prints, and how the recipe pages cite a row of it
(docs/hooks/recipe_pages.recipe_time)."""

import datetime
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "recipe_times.py"
FAKE = ("python -c \"print('[longctx] finished 3 steps; MLflow run abc in sqlite:///mlflow.db'); "
        "print('[longctx] registered model: models:/x@champion (version 1)')\"")
# prints what the run sees, then fails, so that time_command keeps its output
PROBE = ("python -c \"import os, sys; print('RAY', os.environ.get('RAY_ADDRESS')); "
         "print('MLFLOW', os.environ.get('MLFLOW_TRACKING_URI')); print('CWD', os.getcwd()); "
         "print('FILES', os.listdir('.')); print('PP', os.environ['PYTHONPATH']); sys.exit(1)\"")
FAILING = "python -c \"import sys; print('starting'); sys.exit(3)\""


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load(SCRIPT, "recipe_times_bench")


@pytest.fixture(scope="module")
def pages():
    return _load(ROOT / "docs" / "hooks" / "recipe_pages.py", "recipe_pages_for_test")


def test_flags(bench):
    args = bench.parse_args([])
    assert args.only is None and args.max_steps is None
    args = bench.parse_args(["--only", "ram_qa", "--only", "comi_qa", "--max-steps", "2"])
    assert args.only == ["ram_qa", "comi_qa"] and args.max_steps == 2
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "no_such_recipe"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--max-steps", "0"])


def test_commands_are_the_recipes_tiny_presets(bench):
    assert set(bench.COMMANDS) == {"comet_32k", "comet_128k_pipeline", "swat_pretrain", "baseline_finetune",
                                   "ram_qa", "comi_qa"}
    for name, command in bench.COMMANDS.items():
        argv = shlex.split(command)
        assert argv[:2] == ["python", f"recipes/{name}.py"] and (ROOT / argv[1]).is_file()
        assert "--preset" in argv
        resolved = bench.argv_of(command)
        assert resolved[0] == sys.executable and resolved[1] == str(ROOT / "recipes" / f"{name}.py")


def test_time_one_command(bench):
    row = bench.time_command(FAKE, timeout=120)
    assert row["command"] == FAKE
    assert row["returncode"] == 0 and row["steps"] == 3
    assert row["registered_model"] == "models:/x@champion (version 1)"
    assert row["wall_seconds"] >= 0
    for key in ("load_avg_1m_at_start", "load_avg_1m_at_end"):
        assert isinstance(row[key], float)
    assert "stdout_tail" not in row  # a run that succeeded keeps no output


def test_environment_and_working_directory(bench, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://somewhere:10001")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://somewhere:5000")
    row = bench.time_command(PROBE, timeout=120)
    seen = dict(line.split(" ", 1) for line in row["stdout_tail"].splitlines())
    assert seen["RAY"] == "None" and seen["MLFLOW"] == "None"
    assert seen["PP"].split(os.pathsep)[0] == str(ROOT)
    assert seen["FILES"] == "[]"  # a fresh, empty working directory ...
    assert Path(seen["CWD"]) != ROOT and not Path(seen["CWD"]).exists()  # ... removed afterwards


def test_failed_command_keeps_its_output(bench):
    row = bench.time_command(FAILING, timeout=120)
    assert row["returncode"] == 3 and row["steps"] is None and row["registered_model"] is None
    assert "starting" in row["stdout_tail"]


def test_main_prints_one_json_object(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "COMMANDS", {"fake": FAKE, "other": FAILING})
    monkeypatch.setenv("RAY_ADDRESS", "ray://somewhere:10001")
    result = bench.main(["--only", "fake", "--max-steps", "5"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert printed["benchmark"] == "recipe_times"
    assert printed["args"] == {"only": ["fake"], "max_steps": 5, "timeout": 3600.0}
    (row,) = printed["runs"]
    assert row["name"] == "fake" and row["command"] == FAKE + " --max-steps 5"
    assert row["steps"] == 3 and row["planned_steps"] is None  # the fake prints no --help-config
    m = printed["machine"]
    assert m["cpus"] == os.cpu_count() and m["python"] and "torch" in m and m["platform"]
    assert isinstance(m["load_avg_1m_at_start"], float) and isinstance(m["load_avg_1m_at_end"], float)
    assert len(printed["date"]) == 10 and printed["wall_seconds"] >= 0


def test_recipe_pages_cite_a_row_or_say_not_measured(bench, pages):
    command = bench.COMMANDS["ram_qa"]
    assert pages.timed_commands() == tuple(bench.COMMANDS.values())
    assert pages.recipe_time(command, {}).startswith("not measured yet (run `python benchmarks/recipe_times.py")
    args = bench.parse_args([])
    info = {"platform": "Linux-x", "cpus": 2, "torch": "2.0", "python": "3.11.0", "load_avg_1m_at_start": 1.0,
            "load_avg_1m_at_end": 2.0}
    row = {"name": "ram_qa", "command": command, "load_avg_1m_at_start": 1.5, "wall_seconds": 738.0,
           "load_avg_1m_at_end": 2.5, "returncode": 0, "steps": 40,
           "registered_model": "models:/r@champion (version 1)", "planned_steps": 40}
    data = json.loads(json.dumps(bench.assemble([row], args, info, datetime.datetime(2026, 12, 2, 10, 0), 800.0)))
    text = pages.recipe_time(command, data)
    assert text.startswith(f"12.3 min of wall clock for `{command}` (40 steps; 2 CPU cores, torch 2.0")
    assert "1-minute load average 1.5 at the start and 2.5 at the end, 2026-12-02" in text
    assert text.endswith("; `benchmarks/results/recipe_times.json`)")
    data["runs"][0].update(returncode=1, wall_seconds=50.0)
    assert pages.recipe_time(command, data).startswith(f"not measured: the last run of `{command}` exited with "
                                                       "status 1 after 50 s")
    # a row of a --max-steps run is not the preset's time
    data["runs"][0].update(command=command + " --max-steps 2", returncode=0)
    assert pages.recipe_time(command, data).startswith("not measured yet")
    with pytest.raises(ValueError):
        pages.recipe_time("python recipes/ram_qa.py --preset paper", {})
