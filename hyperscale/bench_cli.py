"""``hyperscale bench``: the side-by-side training-step benchmark (see :mod:`hyperscale.benchmark`).

    hyperscale bench --device cuda --backbone t5-base --batch 64 --src-len 128 --tgt-len 8 --json-out bench.json
    hyperscale bench --device cpu --backbone t5-tiny --steps 5 --eval
"""
from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from .benchmark import run_from_args

    return run_from_args(args)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from .benchmark import add_arguments

    p = subparsers.add_parser(
        "bench", help="time training steps of HyperFormer++ (plain and DeepSpeed ZeRO 0/2/3) against the frozen "
                      "backbone floor, static adapters, LoRA and full fine-tuning; --eval: rank vs generate")
    add_arguments(p)
    p.set_defaults(func=_run)
    return p
