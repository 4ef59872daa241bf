"""Shared fixtures of the end-to-end tests."""

import pytest
from recipe_runs import run_recipe


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny 2-worker run, shared by the tests that only read its outputs."""
    cwd = tmp_path_factory.mktemp("trained")
    run = run_recipe(cwd, "--num-workers", "2", "--max-steps", "8")
    assert run.returncode == 0, run.stdout[-5000:]
    return run
