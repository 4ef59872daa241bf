"""Shared pytest setup: tests never reach the Hugging Face Hub."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny models: on a busy 2-core machine a second thread
    makes them many times slower. Use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _autograd_is_left_on():
    """Fail the test that turns autograd off for the whole process (``torch.set_grad_enabled(False)``
    outside a ``with`` block): every later test that needs gradients would fail far from the cause.
    torch is not imported here; a test that never imported it is not checked."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None and not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left torch autograd disabled for the process; scope it with `with torch.no_grad():`")


def _uses_shared_ray(item) -> bool:
    return item is not None and "e2e" in item.path.parts and item.get_closest_marker("own_ray") is None


def pytest_runtest_teardown(item, nextitem):
    """The shared Ray head of the end-to-end tests (tests/e2e/conftest.py) lives while they run back to back: it is
    stopped before any other test (one that may start a Ray of its own) and at the end of the session."""
    recipe_runs = sys.modules.get("recipe_runs")
    if recipe_runs is not None and not _uses_shared_ray(nextitem):
        recipe_runs.stop_shared_ray_head()


def pytest_sessionfinish(session, exitstatus):
    recipe_runs = sys.modules.get("recipe_runs")
    if recipe_runs is not None:
        recipe_runs.stop_shared_ray_head()
