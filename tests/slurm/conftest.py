"""Fixtures for the scheduler tests: find the private test cluster or skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLUSTER_DIR = Path(os.environ.get("HYPERSCALE_SLURM_DIR", f"/tmp/hyperscale-slurm-{os.getuid()}"))
START_HINT = "start it with: bash tests/slurm/start_cluster.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs a running SLURM cluster (bash tests/slurm/start_cluster.sh)")


def _slurm_env() -> dict[str, str]:
    env = dict(os.environ)
    if "SLURM_CONF" not in env and (CLUSTER_DIR / "slurm.conf").exists():
        env["SLURM_CONF"] = str(CLUSTER_DIR / "slurm.conf")
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """The environment (with SLURM_CONF) for talking to a cluster with >= 2 usable nodes."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM client tools not installed (apt-get install -y slurm-wlm munge); "
                    + START_HINT)
    env = _slurm_env()
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo timed out: no SLURM controller answering; " + START_HINT)
    if out.returncode != 0:
        pytest.skip(f"no SLURM cluster answering ({out.stderr.strip()}); " + START_HINT)
    usable = {line.split()[0] for line in out.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].rstrip("*~#") in
              ("idle", "mixed", "allocated", "completing")}
    if len(usable) < 2:
        pytest.skip(f"need 2 usable SLURM nodes, sinfo says: {out.stdout.strip()!r}; " + START_HINT)
    return env
