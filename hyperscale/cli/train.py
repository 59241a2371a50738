"""``hyperscale train [CONFIG] [key.sub=value ...] [--resume auto|PATH]``: the trainer (see :mod:`hyperscale.train`)."""
from __future__ import annotations

import argparse

from .. import train as entry
from ..training.host_memory import return_large_blocks_eagerly


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train (the embedded tiny default run without arguments)",
                       parents=[entry.build_arg_parser()], add_help=False, conflict_handler="resolve")
    p.set_defaults(func=run)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = entry.build_arg_parser("hyperscale train").parse_intermixed_args(argv)
    args.func = run
    return args


def run(args: argparse.Namespace) -> int:
    return_large_blocks_eagerly()  # a training process: freed weights go back to the OS (training/host_memory.py)
    entry.run(args)
    return 0
