"""Shared fixtures of the end-to-end tests."""

import os

import pytest
from page_commands import shown
from recipe_runs import SHARED_RAY, SPEED, run_recipe, shared_ray_head, stop_shared_ray_head


def pytest_configure(config):
    config.addinivalue_line("markers", "own_ray: the test starts a Ray of its own (a head it submits to, workers it "
                                       "kills); its recipes do not attach to the shared head")


@pytest.fixture
def ray_cluster():
    """The address (host:port) of the session's shared local Ray head: one `ray start --head`, token auth on, that
    every end-to-end recipe run attaches to instead of starting and stopping a Ray of its own. Every test here uses
    it (autouse, below) unless marked ``own_ray``: ``run_recipe`` and ``recipe_env()`` point the recipe at it.
    LONGCTX_TEST_SHARED_RAY=0 turns the sharing off (every recipe starts a Ray of its own, as a user's run does)."""
    return shared_ray_head().address


@pytest.fixture(autouse=True)
def _recipes_attach_to_the_shared_ray(request, monkeypatch):
    if request.node.get_closest_marker("own_ray") or os.environ.get("LONGCTX_TEST_SHARED_RAY") == "0":
        stop_shared_ray_head()  # one cluster on the machine at a time
        return
    monkeypatch.setenv(SHARED_RAY, request.getfixturevalue("ray_cluster"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny 2-worker run of the quick start's command, shared by the tests that only read its outputs."""
    cwd = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:  # set up before the autouse fixture above: attach here
        if os.environ.get("LONGCTX_TEST_SHARED_RAY") != "0":
            patch.setenv(SHARED_RAY, shared_ray_head().address)
        run = run_recipe(cwd, *SPEED, "--num-workers", "2", "--max-steps", "8",
                         command=shown("python recipes/comet_32k.py --preset tiny", "quickstart.md"))
    assert run.returncode == 0, run.stdout[-5000:]
    return run
