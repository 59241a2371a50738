"""Low-resource sweep (``hyperscale sweep``): every method trained on n examples per task, for several n.

Each (method, n, seed) is one multi-task training run on the config's tasks with ``data.n_train=n`` and
``data.train_subset_seed=seed`` (the same rows for every method), scored on each task's test split; the
report adds the average over tasks. Every cell is a training run (:mod:`hyperscale.experiments.grid`).
"""
from __future__ import annotations

from ..errors import ConfigError
from ..modeling.config import METHODS
from .grid import Cell

DEFAULT_N = (100, 500, 1000, 2000, 4000)
DEFAULT_METHODS = ("hyperformer++", "adapters", "finetune")
AVERAGE = "average"


def sweep_cells(methods: list[str], sizes: list[int], seeds: int) -> list[Cell]:
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"--methods {','.join(bad)}: choose from {', '.join(METHODS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    return [Cell(f"{method}/n{n}/seed{seed}",
                 (f"model.method={method}", f"data.n_train={n}", f"data.train_subset_seed={seed}", f"train.seed={seed}"),
                 {"method": method, "n_train": n, "seed": seed})
            for method in methods for n in sizes for seed in range(seeds)]


def with_average(rows: list[dict]) -> list[dict]:
    """The rows plus, per cell, a row for the mean over its tasks (task ``average``)."""
    by_cell: dict[str, list[dict]] = {}
    for row in rows:
        by_cell.setdefault(row["dir"], []).append(row)
    extra = [{**cell_rows[0], "task": AVERAGE, "metric": sum(r["metric"] for r in cell_rows) / len(cell_rows)}
             for cell_rows in by_cell.values()]
    return rows + extra
