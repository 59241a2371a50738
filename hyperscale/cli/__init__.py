"""The ``hyperscale`` command: one dispatcher, one module per subcommand.

    hyperscale train | eval | predict | export | params | slurm | bench ...

Every subcommand runs under :func:`hyperscale.errors.run_main`: a :class:`~hyperscale.errors.HyperscaleError`
becomes one ``hyperscale: error: ...`` line and exit status 2; anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import run_main
from ..training.logging import quiet_known_noise
from . import bench, export, params, predict, slurm, train
from . import eval as eval_cmd

SUBCOMMANDS = (train, eval_cmd, export, predict, params, slurm, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyperscale", description="Multi-task T5 with shared hypernetworks, on DeepSpeed.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_known_noise()
    if argv[:1] == ["train"]:  # overrides may follow --resume: argparse mixes them only without subparsers
        args = train.parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
    return run_main(lambda: args.func(args))
