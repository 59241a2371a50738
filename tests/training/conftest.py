"""Trainer tests: real DeepSpeed runs of the tiny CPU config, shared between tests.

Every training launch is expensive (about 10 s of start-up; 2-3 s forked from tests/preloaded.py, which these
runs use: two ranks start as srun starts them), so the runs live in one session-scoped
registry (``runs``, see training_helpers.py): a test asks for a run by name, the first request
launches it, later ones reuse it, and a failed launch is remembered (each test that needs it fails
with the launch's log tail instead of launching again).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from training_helpers import Run, Runs  # noqa: E402


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    return Runs(tmp_path_factory.mktemp("runs"))
