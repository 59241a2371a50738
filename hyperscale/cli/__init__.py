"""The ``hyperscale`` command: one dispatcher, one module per subcommand.

    hyperscale train | eval | predict | export | params | plan | slurm | bench | inspect | adapt | sweep ...

Every subcommand runs under :func:`hyperscale.errors.run_main`: a :class:`~hyperscale.errors.HyperscaleError`,
an argument error included, becomes one ``hyperscale: error: ...`` line and exit status 2; anything else keeps its
traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import ArgumentParser, run_main
from ..training.logging import quiet_known_noise, third_party_quiet
from . import adapt, bench, export, inspect, params, plan, predict, slurm, sweep, train
from . import eval as eval_cmd

SUBCOMMANDS = (train, eval_cmd, export, predict, params, plan, slurm, bench, inspect, adapt, sweep)
# subcommands whose overrides may follow their options (argparse intermixes only without subparsers)
INTERMIXED = {"train": train, "adapt": adapt, "sweep": sweep, "plan": plan}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="hyperscale", description="Multi-task T5 with shared hypernetworks, on DeepSpeed.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The subcommand's arguments; a bad one raises :class:`~hyperscale.errors.ConfigError` (one line, exit 2)."""
    if argv[:1] and argv[0] in INTERMIXED:  # the subcommand's own parser, parsed intermixed
        sub = ArgumentParser(prog="hyperscale").add_subparsers()
        return INTERMIXED[argv[0]].add_parser(sub).parse_intermixed_args(argv[1:])
    return build_parser().parse_args(argv)


def _run(argv: list[str]) -> int:
    args = parse_args(argv)
    return args.func(args)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # scoped: main() called from Python leaves no filter or setting behind; a run with logging.verbose shows all
    with quiet_known_noise(), third_party_quiet(verbose=False):
        return run_main(lambda: _run(argv))
