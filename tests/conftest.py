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
