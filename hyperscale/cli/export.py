"""``hyperscale export RUN OUT [--materialize] [--no-include-backbone]``: a ZeRO checkpoint of any stage and world
size -> standalone weights that load without DeepSpeed, the run or (unless it is a hub id) the original backbone."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..training.export import export_checkpoint, read_export_info


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="ZeRO checkpoint -> standalone weights (no DeepSpeed needed to use them)")
    p.add_argument("checkpoint", help="a run directory, its checkpoints/ directory, or one step-* checkpoint")
    p.add_argument("out", help="output directory (must not hold an export already)")
    p.add_argument("--materialize", action="store_true",
                   help="also write every task's generated adapters as static weights into OUT/materialized")
    p.add_argument("--backbone", default=None, help="backbone to use instead of the one recorded in the checkpoint")
    p.add_argument("--include-backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="copy the backbone into OUT/backbone so that the export stands alone (default: yes for a "
                        "local directory or a preset, no for a hub id, which is recorded as such)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out, materialize=args.materialize, backbone=args.backbone,
                            overwrite=args.overwrite, include_backbone=args.include_backbone)
    info = read_export_info(out) or {}
    bb = info.get("backbone") or {}
    if bb.get("included"):
        where = f"backbone {_how_included(out / bb['path'], bb.get('origin') or '')} {out / bb['path']}"
    else:
        where = f"backbone {bb.get('backbone_id')!r} not included: loading the export needs it"
    print(f"exported step {info.get('step')} to {out} ({where})")
    for line in info.get("how_to_load", []):
        print(f"  {line}")
    return 0


def _how_included(backbone: Path, origin: str) -> str:
    """How the backbone's files got into the export, as the files say: hard links to a local backbone's files
    (no second copy on disk: a link count above 1), copies (another file system), or written from the model
    (a preset or a hub model)."""
    files = [p for p in backbone.iterdir() if p.is_file()] if backbone.is_dir() else []
    if not os.path.isdir(origin):
        return "written to"
    linked = sum(p.stat().st_nlink > 1 for p in files)
    if files and linked == len(files):
        return "hard-linked (no second copy on disk) into"
    if linked == 0:
        return "copied into"
    return f"linked ({linked} files) and copied ({len(files) - linked}) into"
