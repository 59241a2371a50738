"""Few-shot transfer (``hyperscale adapt``): new tasks learned from k examples on top of a multi-task model.

For each new task, each k and each seed, every method trains on the same k examples (``data.n_train=k``,
``data.train_subset_seed=seed``: the rows depend on the task, k and the seed only) and is scored on the task's
test split. The methods are what ``transfer.train`` lets learn on the HyperFormer++ export (the new task
embedding; plus the hypernetwork; plus T5's layer norms) and, with ``--baseline``, a multi-task ``finetune``
export fine-tuned on the same examples. Every cell is a training run (:mod:`hyperscale.experiments.grid`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..modeling.config import ARCH_FIELDS
from ..modeling.io import read_config, resolve_backbone_id
from ..training.config import TRANSFER_TRAIN
from .grid import Cell

DEFAULT_K = (4, 16, 32, 100)
DEFAULT_MODES = ("embedding", "embedding+hypernet", "embedding+hypernet+norms")


def _model_overrides(export: Path) -> list[str]:
    """``model.*`` overrides that describe the export's model (the transfer run checks them against it)."""
    cfg = read_config(export)
    out = [f"model.{name}={json.dumps(getattr(cfg, name))}" for name in ARCH_FIELDS]
    backbone = resolve_backbone_id(cfg.backbone_id, export)
    if backbone:
        out.append(f"model.backbone={json.dumps(str(backbone))}")
    return out


def method_label(method: str, mode: str) -> str:
    return method if mode == "all" else f"{method} ({mode})"


def adapt_cells(export: Path, tasks: list[str], ks: list[int], seeds: int, modes: list[str],
                baseline: Optional[Path], init: str) -> list[Cell]:
    source = read_config(export)
    known = [t for t in tasks if t in source.tasks]
    if known:
        raise ConfigError(f"{', '.join(known)}: already a task of {export} (its tasks: {', '.join(source.tasks)}); "
                          "few-shot transfer adds new tasks")
    bad = [m for m in modes if m not in TRANSFER_TRAIN or m == "all"]
    if bad:
        raise ConfigError(f"--train {','.join(bad)}: choose from {', '.join(t for t in TRANSFER_TRAIN if t != 'all')}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    sources = [(export, source.method, m) for m in modes]
    if baseline is not None:
        base = read_config(baseline)
        if base.method != "finetune":
            raise ConfigError(f"--baseline {baseline} is a {base.method} export; the baseline is a multi-task "
                              "finetune export (train it with model.method=finetune)")
        sources.append((baseline, "finetune", "all"))
    cells = []
    for path, method, mode in sources:
        model = _model_overrides(path)
        label = method_label(method, mode)
        slug = label.replace(" (", "_").replace(")", "")
        for task in tasks:
            for k in ks:
                for seed in range(seeds):
                    overrides = (*model, f"transfer.from_export={json.dumps(str(Path(path).resolve()))}",
                                 f"transfer.train={mode}", f"transfer.new_task_init={json.dumps(init)}",
                                 f"data.tasks=[{task}]", f"data.n_train={k}", f"data.train_subset_seed={seed}",
                                 f"train.seed={seed}")
                    cells.append(Cell(f"{slug}/{task}/k{k}/seed{seed}", overrides,
                                      {"method": label, "k": k, "seed": seed, "new_task": task}))
    return cells
