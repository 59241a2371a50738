"""The ``hyperscale`` command: one dispatcher, one module per subcommand.

    hyperscale train | eval | predict | export | params | plan | slurm | bench | inspect | adapt | sweep ...

Every subcommand runs under :func:`hyperscale.errors.run_main`: a :class:`~hyperscale.errors.HyperscaleError`
becomes one ``hyperscale: error: ...`` line and exit status 2; anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import run_main
from ..training.logging import quiet_known_noise
from . import adapt, bench, export, inspect, params, plan, predict, slurm, sweep, train
from . import eval as eval_cmd

SUBCOMMANDS = (train, eval_cmd, export, predict, params, plan, slurm, bench, inspect, adapt, sweep)
# subcommands whose overrides may follow their options (argparse intermixes only without subparsers)
INTERMIXED = {"train": train.parse_args, "adapt": adapt.parse_args, "sweep": sweep.parse_args,
              "plan": plan.parse_args}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyperscale", description="Multi-task T5 with shared hypernetworks, on DeepSpeed.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_known_noise()
    if argv[:1] and argv[0] in INTERMIXED:
        args = INTERMIXED[argv[0]](argv[1:])
    else:
        args = build_parser().parse_args(argv)
    return run_main(lambda: args.func(args))
