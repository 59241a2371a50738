"""``hyperscale params``: the parameter report of a method on a backbone, without allocating weights.

The backbone is built on the meta device (shapes only), wrapped, and counted::

    hyperscale params --backbone t5-base --method hyperformer++ --tasks 8 [--reduction-factor 32] [--json]

Every other architecture field of ``hyperscale.modeling.config.ArchConfig`` is an option too
(``--task-embedding-dim 32``, ``--no-train-layer-norms``, ...), generated from that schema.

``--backbone`` is a preset name (``t5-base``), ``preset:NAME``, or a local directory whose
``config.json`` is read. ``--tasks`` is a count or a comma-separated list of task names.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from ..errors import ConfigError
from ..modeling.config import ARCH_DEFAULTS, METHODS, ArchConfig, HyperscaleConfig
from ..modeling.model import HyperscaleModel
from ..modeling.presets import PRESETS, backbone_from_config, preset_config, preset_ties_head

DESCRIPTION = "Print the parameter report (trainable by group, total, % per task) without allocating weights."


def parse_tasks(spec: str) -> list[str]:
    """``"8"`` -> ``task0..task7``; ``"rte,sst2"`` -> ``["rte", "sst2"]``."""
    spec = spec.strip()
    if re.fullmatch(r"[+-]?\d+", spec):
        n = int(spec)
        if n < 1:
            raise ConfigError(f"--tasks must be at least 1, got {n}")
        return [f"task{i}" for i in range(n)]
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--tasks {spec!r}: give a count or a comma-separated list of task names")
    bad = [t for t in names if not re.fullmatch(r"[A-Za-z][\w.-]*", t)]
    if bad:
        raise ConfigError(f"--tasks: {bad} are not task names (a name starts with a letter); give a count or names")
    return names


def backbone_config(spec: str):
    """(config, tied LM head?) for a preset name, ``preset:NAME`` or a local model directory."""
    if spec.startswith("preset:") or spec in PRESETS:
        return preset_config(spec), preset_ties_head(spec)
    if os.path.isdir(spec):
        cfg = AutoConfig.from_pretrained(spec)
        # transformers 5 forces tie_word_embeddings=True on T5/mT5 configs; the file says what the
        # checkpoint holds (false for v1.1, flan-t5 and mT5)
        raw = json.loads((Path(spec) / "config.json").read_text())
        return cfg, raw.get("tie_word_embeddings", True) is not False
    raise ConfigError(f"--backbone {spec!r} is neither a preset nor a local model directory; "
                     f"presets: {', '.join(sorted(PRESETS))}")


def build_report(backbone: str, tasks: list[str], **arch: Any) -> dict[str, Any]:
    """Build the model on the meta device and return its ``parameter_report()``; ``arch``: ``ArchConfig`` fields
    (``method="adapters"``, ``reduction_factor=16``, ...), each left out taking its default there."""
    cfg, tied = backbone_config(backbone)
    config = HyperscaleConfig(tasks=list(tasks), backbone_id=backbone, **arch)
    with torch.device("meta"):
        model = backbone_from_config(cfg, tied)
        wrapped = HyperscaleModel(model, config, compute_hash=False)
    return wrapped.parameter_report()


def format_report(report: dict[str, Any], backbone: str) -> str:
    rows = [(name, f"{n:,}") for name, n in report["groups"].items()]
    rows.append(("trainable (total)", f"{report['trainable']:,}"))
    rows.append(("backbone (all weights)", f"{report['backbone']:,}"))
    rows.append(("model total", f"{report['total']:,}"))
    per_task = report["method"] != "finetune"  # finetune trains one whole model for every task: no per-task share
    if per_task:
        rows.append(("trainable per task (% of backbone)", f"{report['percent_per_task']:.2f} %"))
    else:
        rows.append(("trainable (% of backbone)", f"{100.0 * report['trainable'] / report['backbone']:.2f} %"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    n_groups = len(report["groups"])
    head = (f"{report['method']} on {backbone}: {report['tasks']} task(s), reduction factor "
            f"{report['reduction_factor']} (adapter bottleneck {report['bottleneck']})" if per_task else
            f"{report['method']} on {backbone}: {report['tasks']} task(s), all weights shared by every task")
    lines = [head, "", f"{'group':<{w0}}  {'parameters':>{w1}}", "-" * (w0 + 2 + w1)]
    for i, (name, value) in enumerate(rows):
        if i == n_groups:
            lines.append("-" * (w0 + 2 + w1))
        lines.append(f"{name:<{w0}}  {value:>{w1}}")
    return "\n".join(lines)


def _other_arch_fields() -> list:
    """The ``ArchConfig`` fields with an option of their own (generated from the schema)."""
    return [f for f in dataclasses.fields(ArchConfig) if f.name not in ("method", "reduction_factor")]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``params`` on an ``argparse`` subparsers object; sets ``func=run``."""
    p = subparsers.add_parser("params", help=DESCRIPTION.replace("%", "%%"), description=DESCRIPTION.replace("%", "%%"))
    p.add_argument("--backbone", default="t5-base",
                   help="preset name (t5-base, flan-t5-large, ...), preset:NAME, or a local model directory "
                        "(its config.json is read); default t5-base")
    p.add_argument("--method", default=ARCH_DEFAULTS["method"], choices=METHODS,
                   help=f"default {ARCH_DEFAULTS['method']}")
    p.add_argument("--tasks", default="8", help="number of tasks, or a comma-separated list of names; default 8")
    p.add_argument("--reduction-factor", type=int, default=ARCH_DEFAULTS["reduction_factor"],
                   help=f"d_model / adapter bottleneck; default {ARCH_DEFAULTS['reduction_factor']}")
    types = {"int": int, "float": float}
    for f in _other_arch_fields():  # default None: the schema's default
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata.get('help', f.name)}; default {f.default}".replace("%", "%%")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, type=types.get(str(f.type), str), default=None, help=text)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        tasks = parse_tasks(str(args.tasks))
        arch = {f.name: getattr(args, f.name) for f in _other_arch_fields() if getattr(args, f.name, None) is not None}
        report = build_report(args.backbone, tasks, method=args.method, reduction_factor=args.reduction_factor, **arch)
    except (ValueError, OSError) as e:  # what the arguments name does not exist or does not fit
        raise ConfigError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, args.backbone))
    return 0
