"""Fixtures for the data tests: the shared GLUE files (skipped cleanly when
absent), the shipped sample, the shipped tokenizer and a scratch cache dir."""

import os
from pathlib import Path

import pytest

from helpers import REPO


def shared_data_path() -> Path:
    env = os.environ.get("HYPERSCALE_SHARED_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_path()
    if not (path / "glue").is_dir():
        pytest.skip(f"shared GLUE data not found at {path} (set HYPERSCALE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    from hyperscale.data import sample_data_dir

    return sample_data_dir()


@pytest.fixture(scope="session")
def tokenizer():
    from hyperscale.data import default_tokenizer

    return default_tokenizer()
