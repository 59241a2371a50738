"""Modeling tests: one thread per test (the checkout and tests/ are on ``sys.path`` through tests/conftest.py)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight parallel test workers for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
