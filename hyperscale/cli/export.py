"""``hyperscale export RUN OUT [--materialize]``: a ZeRO checkpoint of any stage and world size -> standalone
weights that load without DeepSpeed."""
from __future__ import annotations

import argparse

from ..training.export import export_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="ZeRO checkpoint -> standalone weights (no DeepSpeed needed to use them)")
    p.add_argument("checkpoint", help="a run directory, its checkpoints/ directory, or one step-* checkpoint")
    p.add_argument("out", help="output directory (must not hold an export already)")
    p.add_argument("--materialize", action="store_true",
                   help="also write every task's generated adapters as static weights into OUT/materialized")
    p.add_argument("--backbone", default=None, help="backbone to use instead of the one recorded in the checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out, materialize=args.materialize, backbone=args.backbone,
                            overwrite=args.overwrite)
    print(f"exported to {out}")
    return 0
