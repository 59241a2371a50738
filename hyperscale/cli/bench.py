"""``hyperscale bench``: the side-by-side training-step benchmark (see :mod:`hyperscale.bench`).

    hyperscale bench --device cuda --backbone t5-base --batch 64 --src-len 128 --tgt-len 8 --json-out bench.json
    hyperscale bench --device cpu --backbone t5-tiny --steps 5 --eval
    # the 11B target: t5-v1_1-xxl built in bf16 on the GPU, ZeRO-2, activation checkpointing, largest batch
    hyperscale bench --device cuda --backbone t5-v1_1-xxl --only ds-zero2 --gradient-checkpointing --batch 32 \
        --max-batch-search --max-batch-cap 2048 --search-seconds 300 --search-resolution 64
    # the search logic on a CPU: a simulated 400 MB device
    hyperscale bench --device cpu --only ds-zero2 --tgt-len 128 --batch 1 --max-batch-search --fake-mem-limit-mb 400
"""
from __future__ import annotations

import argparse

from ..bench import add_arguments, run_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="time training steps of HyperFormer++ (plain and DeepSpeed ZeRO 0/2/3) against the frozen "
                      "backbone floor, static adapters, LoRA and full fine-tuning; --eval: rank vs generate; "
                      "--gradient-checkpointing; --max-batch-search: the largest batch that fits")
    add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p
