"""Shared fixtures of the end-to-end tests."""

import pytest
from page_commands import shown
from recipe_runs import SPEED, run_recipe


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny 2-worker run of the quick start's command, shared by the tests that only read its outputs."""
    cwd = tmp_path_factory.mktemp("trained")
    run = run_recipe(cwd, *SPEED, "--num-workers", "2", "--max-steps", "8",
                     command=shown("python recipes/comet_32k.py --preset tiny", "quickstart.md"))
    assert run.returncode == 0, run.stdout[-5000:]
    return run
