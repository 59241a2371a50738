"""``hyperscale plan [CONFIG] [key.sub=value ...] --gpus-per-node G [--nodes N] [--gpu-memory 80GiB] [--json]``.

The memory each GPU needs for the run under ZeRO stages 0, 1, 2, 3 and 3 with offload (frozen backbone, trainable
weights, fp32 masters, gradients, Adam states, activations of one micro-batch measured on fake tensors, DeepSpeed's
buffers, an allowance for the CUDA context and allocator), whether it fits, the largest micro-batch that fits, and
the stage to run (see :mod:`hyperscale.training.plan`). Nothing is allocated: an 11B backbone plans on a laptop.

``--gpu-memory`` defaults to this machine's GPU, else 80GiB. ``--json`` prints::

    {"stages": [{"zero_stage": 0, "offload": false, "per_gpu_bytes": {"frozen": ..., "trainable": ...,
      "master": ..., "gradients": ..., "optimizer": ..., "activations": ..., "buffers": ..., "allowance": ...,
      "total": ...}, "fits": true, "max_micro_batch": 64}, ...],
     "recommended": {"zero_stage": 2, "offload": false, "micro_batch_size": 64, "reason": "..."}}

A configuration that fits no stage, even at micro-batch 1 with offload, is an error (exit 2) that says what would
make it fit.
"""
from __future__ import annotations

import argparse
import json

from ..training.config import load_config, split_config_arg
from ..training.plan import make_plan, parse_memory
from ..training.plan import format_plan as format_text

DESCRIPTION = "Per-GPU memory of a run under each ZeRO stage, what fits, and which stage to use (nothing allocated)."


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help=DESCRIPTION, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None, help="run config YAML (default: the embedded default)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.micro_batch_size=32")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (ranks) per node")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpu-memory", default=None,
                   help="memory of one GPU, e.g. 80GiB, 40GB, 81920MiB (default: this machine's GPU, else 80GiB)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=run)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Overrides may come before or after the options (intermixed)."""
    return add_parser(argparse.ArgumentParser(prog="hyperscale").add_subparsers()).parse_intermixed_args(argv)


def run(args: argparse.Namespace) -> int:
    memory = parse_memory(args.gpu_memory) if args.gpu_memory is not None else None
    cfg = load_config(*split_config_arg(args.config, args.overrides))
    plan = make_plan(cfg, args.gpus_per_node, args.nodes, memory)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print(format_text(plan, cfg.model.backbone, cfg.train.precision))
    return 0
