"""``python -m hyperscale.train [CONFIG] [key=value ...] [--resume auto]``: the training entry point.

The same under a plain process, ``torchrun``, the ``deepspeed`` launcher and ``srun``; ``hyperscale train``
runs it too. The recipe itself lives in :mod:`hyperscale.training.recipe`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .errors import ArgumentParser, run_main
from .training.config import load_config, split_config_arg
from .training.host_memory import return_large_blocks_eagerly
from .training.logging import quiet_known_noise
from .training.recipe import Recipe
from .training.results import format_results

__all__ = ["Recipe", "build_arg_parser", "format_results", "main", "run"]


def build_arg_parser(prog: str = "python -m hyperscale.train") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description="Train a hyperscale model (HyperFormer++ and baselines).")
    p.add_argument("config", nargs="?", default=None,
                   help="run config YAML (default: the embedded tiny CPU run, configs/default.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=100")
    p.add_argument("--resume", default=None, help="'auto' (continue from the run's latest checkpoint) or a path")
    p.add_argument("--verbose", action="store_true",
                   help="also show third-party progress bars and banners, and evaluation per task "
                        "(the same as logging.verbose=true)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> dict:
    config, overrides = split_config_arg(args.config, args.overrides)
    if getattr(args, "verbose", False):
        overrides = [*overrides, "logging.verbose=true"]
    cfg = load_config(config, overrides)
    recipe = Recipe(cfg, resume=args.resume)
    recipe.setup()
    recipe.train()
    return recipe.finish()


def main(argv: Optional[list[str]] = None) -> int:
    # intermixed: overrides may come after --resume (`... --resume auto train.max_steps=2000`); a bad argument is
    # one `hyperscale: error:` line (exit 2), as every other bad input
    with quiet_known_noise():  # scoped: main() called from Python leaves no filter behind
        return run_main(lambda: _parse_and_run(argv))


def _parse_and_run(argv: Optional[list[str]]) -> int:
    args = build_arg_parser().parse_intermixed_args(argv)
    return_large_blocks_eagerly()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
