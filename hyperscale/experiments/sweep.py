"""Low-resource sweep (``hyperscale sweep``): every method trained on n examples per task, for several n.

Each (method, n, seed) is one multi-task training run on the config's tasks with ``data.n_train=n`` and
``data.train_subset_seed=seed`` (the same rows for every method), scored on each task's test split; the
report adds the average over tasks. Every cell is a training run (:mod:`hyperscale.experiments.grid`).
"""
from __future__ import annotations

from ..errors import ConfigError
from ..modeling.config import METHODS
from .grid import Cell
from .report import MEAN_SCORE

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


def _task_means(scores: dict[str, list[float]]) -> float:
    """The mean over tasks of each task's mean score."""
    means = [sum(v) / len(v) for v in scores.values()]
    return sum(means) / len(means)


def with_average(rows: list[dict]) -> list[dict]:
    """The rows plus, per cell, a row for the mean over its tasks of each task's mean score (task ``average``,
    metric ``mean``: mrpc counts as the mean of its F1 and accuracy, as in the paper)."""
    by_cell: dict[str, dict[str, list[float]]] = {}
    first: dict[str, dict] = {}
    for row in rows:
        by_cell.setdefault(row["dir"], {}).setdefault(row["task"], []).append(row["score"])
        first.setdefault(row["dir"], row)
    extra = [{**first[cell], "task": AVERAGE, "metric": MEAN_SCORE, "score": _task_means(tasks)}
             for cell, tasks in by_cell.items()]
    return rows + extra


def with_average_chance(chance: dict) -> dict:
    """``chance`` (per task, see :func:`hyperscale.experiments.grid.chance_references`) plus the ``average``
    task: the same mean over tasks of the constant predictor's per-task mean score."""
    if not chance:
        return chance
    per_task = {task: [c["score"] for c in ref["scores"].values()] for task, ref in chance.items()}
    split = next(iter(chance.values())).get("split", "test")
    return {**chance, AVERAGE: {"split": split, "examples": None,
                                "scores": {MEAN_SCORE: {"score": _task_means(per_task), "predicts": None}}}}
