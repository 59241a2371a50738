"""``python nccl_driver.py [hyperscale.train arguments]``: one rank of ``hyperscale.train`` under the simulated NCCL
group of ``nccl_simulation.py`` (launched by torchrun from tests/engine/test_distributed.py)."""
from __future__ import annotations

import sys

from nccl_simulation import install  # this script's folder is on sys.path

from hyperscale.train import main

if __name__ == "__main__":
    install()
    sys.exit(main())
