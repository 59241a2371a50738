"""A grid of training runs (cells) under one experiment directory: resumable, then summarised.

``hyperscale adapt`` (few-shot transfer) and ``hyperscale sweep`` (low-resource) are grids: each cell is an
ordinary training run (:class:`hyperscale.training.recipe.Recipe`: the same DeepSpeed engine, checkpoints,
preemption and resume as ``hyperscale train``) in ``ROOT/<cell name>/``, with the grid's config overrides.

- Launched on several ranks (torchrun, deepspeed, srun), every rank walks the cells in the same order and
  each cell is one distributed run; rank 0 decides which cells are finished and writes the reports.
- A cell whose ``results.json`` exists is finished and never run again; one with checkpoints but no results
  resumes from its latest checkpoint (``--resume auto``). Rerunning the command therefore continues an
  interrupted experiment, and a grid extended with more seeds or sizes runs only the new cells.
- ``ROOT/experiment.json`` records what the grid holds fixed (config, overrides, fixed options); a rerun
  with other fixed settings is refused instead of mixing two experiments in one table.
- The reports: ``ROOT/results.json`` (one row per cell and task), ``ROOT/results.md`` (mean ± std over seeds)
  and ``ROOT/<plot>.png`` (metric against the grid's x, one line per method; needs matplotlib).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, HyperscaleError, RunExistsError
from ..training import distributed as hdist
from ..training.config import load_config
from ..training.ds_config import build_ds_config
from ..training.recipe import Recipe
from . import report

EXPERIMENT_FILE = "experiment.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its directory name under the root, its config overrides and its labels (the
    columns of its result rows: method, x, seed)."""
    name: str
    overrides: tuple[str, ...]
    labels: dict = field(default_factory=dict)


def cell_score(results: dict, split: str, task: str) -> float:
    """A task's score on ``split``: the mean of its metrics (the paper's per-task average), in percent."""
    metrics = results[split]["tasks"][task]
    values = [float(v) for v in metrics.values() if v is not None]
    if not values:
        raise HyperscaleError(f"results hold no metric for {task} on {split}")
    return sum(values) / len(values)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def claim_root(root: Path, spec: dict) -> None:
    """Record the experiment's fixed settings in ``ROOT/experiment.json``, or check them against a previous
    run of the command (rank 0)."""
    path = root / EXPERIMENT_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise HyperscaleError(f"{path} is not valid JSON; move it aside to start the experiment anew") from None
        diffs = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        if diffs:
            detail = "; ".join(f"{k}: {old.get(k)!r} there, {spec.get(k)!r} now" for k in diffs)
            raise RunExistsError(f"{root} holds another experiment ({detail}); use another --out, or the same "
                                 "settings to continue it")
        return
    if root.exists() and any(root.iterdir()):
        raise RunExistsError(f"{root} exists and is not an experiment directory (no {EXPERIMENT_FILE}); use "
                             "another --out")
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(spec, indent=2) + "\n")


def run_grid(root: Path, spec: dict, config: Optional[str], overrides: list[str], cells: list[Cell],
             tasks_of: Any, split: str = "test") -> list[dict]:
    """Run every unfinished cell, then return one row per (cell, task): the cell's labels plus ``task``,
    ``metric`` (the test score) and ``dir``. ``tasks_of(cell)`` names the tasks a cell reports."""
    root = Path(root)
    configs = [load_config(config, [*overrides, *cell.overrides, f"output_dir={root / cell.name}"]) for cell in cells]
    info = hdist.init(load_config(config, overrides).distributed.timeout_s)
    for cfg in configs:  # every cell's settings are checked, for this number of ranks, before anything runs
        build_ds_config(cfg, info.world_size)
    error = None
    if info.rank == 0:
        try:
            claim_root(root, spec)
        except HyperscaleError as e:
            error = e
    if hdist.any_rank(error is not None):
        raise error if error is not None else HyperscaleError("rank 0 refused the experiment directory")
    done = hdist.all_gather_object([(root / c.name / RESULTS_JSON).is_file() for c in cells])[0]
    todo = [(c, cfg) for c, cfg, d in zip(cells, configs, done) if not d]
    hdist.log0(f"experiment {root}: {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run")
    for k, (cell, cfg) in enumerate(todo, 1):
        hdist.log0(f"cell {k}/{len(todo)}: {cell.name}")
        recipe = Recipe(cfg, resume="auto")
        recipe.setup()
        recipe.train()
        recipe.finish()
    rows = []
    for cell in cells:
        results = json.loads((root / cell.name / RESULTS_JSON).read_text())
        for task in tasks_of(cell):
            rows.append({**cell.labels, "task": task, "metric": cell_score(results, split, task),
                         "dir": cell.name})
    return rows


def write_reports(root: Path, rows: list[dict], x_key: str, x_label: str, title: str, plot_name: str,
                  x_column: Optional[str] = None) -> dict:
    """``results.json``, ``results.md`` and the plot (rank 0 only). Returns the paths written; without
    matplotlib the JSON and Markdown are written and the log says how to get the plot. ``x_column``: the
    table's name for x (default ``x_label``, the plot's axis label)."""
    paths: dict[str, Path] = {}
    if not hdist.is_main():
        return paths
    summary = report.summarize(rows, x_key)
    report.write_json(root / RESULTS_JSON, {"rows": rows, "summary": summary})
    _write_atomic(root / RESULTS_MD, f"# {title}\n\n" + report.markdown_table(summary, x_column or x_label, percent=False) + "\n")
    paths.update(json=root / RESULTS_JSON, markdown=root / RESULTS_MD)
    try:
        report.plot_curves(summary, root / plot_name, x_label=x_label, y_label="test score (%)", title=title)
    except ConfigError as e:
        hdist.log0(f"no plot: {e}")
    else:
        paths["plot"] = root / plot_name
    return paths


def print_reports(paths: dict) -> None:
    """The table, then where each report is (rank 0: the only rank with ``paths``)."""
    if not paths:
        return
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind:>9}: {path}")


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{what} must be positive integers, got {text!r}")
    return sorted(set(values))
