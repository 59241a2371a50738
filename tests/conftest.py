"""Markers and process-wide hygiene shared by the whole suite; puts the checkout and this folder on ``sys.path``
(plain ``pytest`` from a source checkout imports ``hyperscale``, and every test imports ``helpers``)."""
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for _p in (str(TESTS.parent), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import find_free_port, saved_env  # noqa: E402

# DeepSpeed's ZeRO-3 (zero.Init, also inside deepspeed.initialize at stage 3) replaces torch.nn.functional.linear
# with its own autograd Function for the rest of the process ("This will persist unless manually reset"). A
# process of the product never mixes ZeRO-3 with other work, but this suite does: later tests would trace
# DeepSpeed's linear (torch.compile's partitioner then fails on it).
_TORCH_LINEAR = torch.nn.functional.linear


@pytest.fixture(autouse=True)
def _undo_deepspeed_linear_patch():
    yield
    if torch.nn.functional.linear is not _TORCH_LINEAR:
        torch.nn.functional.linear = _TORCH_LINEAR


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "distributed: launches DeepSpeed training runs (torchrun with 2 processes "
                            "over gloo on CPU, or one plain process); deselect with -m 'not distributed'")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (every distributed test is slow too); "
                            "the fast tier is pytest -m 'not slow'")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    for item in items:  # a launch is never fast: `distributed` (and a SLURM job, `slurm`) implies `slow`
        launches = item.get_closest_marker("distributed") or item.get_closest_marker("slurm")
        if launches is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def world1_group():
    """A world-size-1 process group (gloo) for a module's in-process DeepSpeed tests, destroyed afterwards (later
    tests expect no group). A group left by an earlier in-process test (the benchmark's rows start one) is left
    first: DeepSpeed caches a clone of the world group process-wide, and ``hdist.leave`` clears it with the group,
    or this module's engines would use a dead one ("Group ... is not registered")."""
    import os

    import deepspeed

    from hyperscale.training import distributed as hdist

    hdist.leave()
    with saved_env():
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(find_free_port()))
        deepspeed.init_distributed()
        yield
        hdist.leave()
