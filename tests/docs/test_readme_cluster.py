"""The README's cluster commands: Ray token auth on, and results land where the job was submitted from.

The commands need a Ray head (``tests/e2e/test_e2e_ray_job_submit.py`` runs the submission itself);
here: every ``ray start`` / ``ray job submit`` runs with ``RAY_AUTH_MODE=token``, and the submitted
recipe command uses absolute MLflow and checkpoint paths, whose flags the recipe really has."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)


def _blocks() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    return [[line.split(" #")[0].strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]
            for body in BLOCK.findall(text)]


def test_every_readme_ray_command_keeps_token_auth_on():
    seen = 0
    for block in _blocks():
        exported = False
        for line in block:
            exported = exported or line == "export RAY_AUTH_MODE=token"
            if re.match(r"^(\w+=\S+ )*ray (start|job submit)\b", line):
                seen += 1
                assert exported or "RAY_AUTH_MODE=token " in line, f"README: {line!r} runs Ray without token auth"
    assert seen >= 2, "the README no longer shows ray start and ray job submit"


def _submitted_recipe() -> list[str]:
    for block in _blocks():
        for line in block:
            if "ray job submit" in line:
                return shlex.split(line.split(" -- ", 1)[1])
    raise AssertionError("the README shows no ray job submit")


def test_the_submitted_job_writes_mlflow_and_checkpoints_where_it_was_submitted(tmp_path, capsys):
    argv = _submitted_recipe()
    assert argv[:2] == ["python", "recipes/comet_32k.py"]
    flags = argv[2:]
    assert "sqlite:///$PWD/mlflow.db" in flags and "$PWD/outputs/ray" in flags, (
        "ray job submit runs in Ray's temporary copy of the working dir: give absolute --tracking-uri and "
        "--launch.storage_path")
    spec = importlib.util.spec_from_file_location("comet_32k_recipe", REPO / argv[1])
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    from framework.launch.recipe_cli import main

    expanded = [f.replace("$PWD", str(tmp_path)) for f in flags]  # what the user's shell passes
    assert main(recipe.PRESETS, "paper", "readme", argv=[*expanded, "--help-config"]) == 0
    shown = capsys.readouterr().out
    assert f'--tracking.tracking_uri "sqlite:///{tmp_path}/mlflow.db"' in shown
    assert f'--launch.storage_path "{tmp_path}/outputs/ray"' in shown
