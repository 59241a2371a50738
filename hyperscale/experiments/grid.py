"""A grid of training runs (cells) under one experiment directory: resumable, then summarised.

``hyperscale adapt`` (few-shot transfer) and ``hyperscale sweep`` (low-resource) are grids: each cell is an
ordinary training run (:class:`hyperscale.training.recipe.Recipe`: the same DeepSpeed engine, checkpoints,
preemption and resume as ``hyperscale train``) in ``ROOT/<cell name>/``, with the grid's config overrides.

- Launched on several ranks (torchrun, deepspeed, srun), every rank walks the cells in the same order and
  each cell is one distributed run; rank 0 decides which cells are finished and writes the reports.
- A cell whose ``results.json`` exists is finished and never run again; one with checkpoints but no results
  resumes from its latest checkpoint (``--resume auto``). Rerunning the command therefore continues an
  interrupted experiment, and a grid extended with more seeds or sizes runs only the new cells.
- The console gets one line per cell (its scores, its time, where its log is); everything the cell's run prints
  goes to ``ROOT/<cell>/cell.log`` (rank r > 0: ``cell.rank<r>.log``). A cell that finishes keeps its
  ``results.json``, config, data protocol, evaluations and TensorBoard logs; its checkpoints (and the tokenizer
  and preset backbone weights they load) are removed unless ``keep_checkpoints`` (``--keep-checkpoints``),
  its export unless ``keep_exports`` (``--keep-exports``).
- ``ROOT/experiment.json`` records what the grid holds fixed (config, overrides, fixed options); a rerun
  with other fixed settings is refused instead of mixing two experiments in one table.
- The reports: ``ROOT/results.json`` (one row per cell, task and metric, the summary and each task's chance
  reference), ``ROOT/results.md`` (a table per task, a column per metric, a constant predictor's scores beside
  them; ± std only over 2+ seeds) and ``ROOT/<plot>.png`` (a panel per task and metric, one line per method; needs
  matplotlib).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..atomic import write_text_atomic
from ..data.loading import load_multitask_splits
from ..data.specs import registry_for_export, registry_from_config
from ..errors import ConfigError, HyperscaleError, RunExistsError
from ..training import distributed as hdist
from ..training.config import AUTO, load_config
from ..training.ds_config import build_ds_config
from ..training.geometry import batch_geometry
from ..training.recipe import Recipe
from . import report
from ..data.chance import constant_predictor_scores
from .report import metric_label

EXPERIMENT_FILE = "experiment.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CELL_LOG = "cell.log"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its directory name under the root, its config overrides and its labels (the
    columns of its result rows: method, x, seed)."""
    name: str
    overrides: tuple[str, ...]
    labels: dict = field(default_factory=dict)


def cell_scores(results: dict, split: str, task: str) -> dict[str, float]:
    """A task's scores on ``split``, ``{metric: percent}`` (mrpc: ``f1`` and ``acc``), as the run evaluated them."""
    metrics = results[split]["tasks"][task]
    values = {name: float(v) for name, v in metrics.items() if v is not None}
    if not values:
        raise HyperscaleError(f"results hold no metric for {task} on {split}")
    return values


def chance_reference(cfg: Any, task: str, split: str = "test") -> dict:
    """What a constant predictor scores on the rows a cell with config ``cfg`` evaluates ``task`` on (the first
    ``eval.max_examples`` of the split, loaded as the cell's run loads them):
    ``{"split", "examples", "scores": {metric: {"score", "predicts"}}}``."""
    d = cfg.data
    registry = registry_from_config(d)  # the built-in tasks and the config's own specs, as the run had them
    if cfg.transfer.from_export:
        registry = registry.merged(registry_for_export(cfg.transfer.from_export))
    splits = load_multitask_splits([task], None if d.data_dir == "sample" else d.data_dir, registry=registry,
                                   n_train=d.n_train, n_val=d.n_val, n_test=d.n_test, seed=d.split_seed,
                                   subset_seed=d.train_subset_seed, stsb_grid=d.stsb_grid)
    targets = list(splits[task][split]["target"])
    if cfg.eval.max_examples is not None:
        targets = targets[:cfg.eval.max_examples]
    return {"split": split, "examples": len(targets),
            "scores": constant_predictor_scores(registry.get(task), targets)}


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
    write_text_atomic(path, json.dumps(spec, indent=2) + "\n")


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Everything this process writes to stdout and stderr (Python, DeepSpeed's C++ side, progress bars) goes to
    ``path`` (appended) while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def _say(msg: str) -> None:
    """One line on the console (rank 0)."""
    if hdist.is_main():
        print(msg, flush=True)


def _score_text(results_path: Path, split: str) -> str:
    try:
        res = json.loads(results_path.read_text())[split]["tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no {split} scores"
    return "; ".join(f"{task} " + ", ".join(f"{metric_label(m)} {v:.1f}" for m, v in scores.items())
                     for task, scores in res.items())


def _tidy(cell_dir: Path, keep_checkpoints: bool, keep_exports: bool) -> None:
    """A finished cell keeps its results, config, evaluations and logs; its checkpoints and export go unless kept
    (rank 0, after every rank is done with them)."""
    hdist.barrier()
    if not hdist.is_main():
        return
    # the run's tokenizer/ and, for a preset backbone, backbone/ (its random weights) serve its checkpoints: an
    # export holds its own copies (hard links)
    doomed = [] if keep_checkpoints else [cell_dir / "checkpoints", cell_dir / "tokenizer", cell_dir / "backbone"]
    if not keep_exports:
        doomed += [cell_dir / "export", *sorted(cell_dir.glob("export-step-*"))]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)


def run_grid(root: Path, spec: dict, config: Optional[str], overrides: list[str], cells: list[Cell],
             tasks_of: Any, split: str = "test", keep_checkpoints: bool = False,
             keep_exports: bool = False) -> list[dict]:
    """Run every unfinished cell (one console line each, the run's own output in its ``cell.log``), then return
    one row per (cell, task, metric): the cell's labels plus ``task``, ``metric`` (its name: ``f1``, ``acc``, ...),
    ``score`` (percent, on ``split``) and ``dir``. ``tasks_of(cell)`` names the tasks a cell reports. A cell that
    finishes here loses its checkpoints unless ``keep_checkpoints`` and its export unless ``keep_exports``."""
    root = Path(root)
    configs = [load_config(config, [*overrides, *cell.overrides, f"output_dir={root / cell.name}"]) for cell in cells]
    info = hdist.init(load_config(config, overrides).distributed.timeout_s)
    for cfg in configs:  # every cell's settings are checked, for this number of ranks, before anything runs
        if cfg.deepspeed.zero_stage == AUTO:  # each run's trainer chooses its stage: the batch geometry here
            batch_geometry(cfg, info.world_size)
        else:
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
    _say(f"experiment {root}: {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run "
         f"(each cell's output: CELL/{CELL_LOG})")
    width = len(str(len(todo)))
    for k, (cell, cfg) in enumerate(todo, 1):
        cell_dir = root / cell.name
        cell_dir.mkdir(parents=True, exist_ok=True)
        log = cell_dir / (CELL_LOG if info.rank == 0 else f"cell.rank{info.rank}.log")
        t0 = time.perf_counter()
        head = f"cell {k:>{width}}/{len(todo)} {cell.name}"
        try:
            with _output_to(log):
                recipe = Recipe(cfg, resume="auto")
                recipe.setup()
                recipe.train()
                recipe.finish()
        except BaseException as e:
            stopped = isinstance(e, (SystemExit, KeyboardInterrupt))
            _say(f"{head}: {'stopped' if stopped else 'failed'} after {time.perf_counter() - t0:.0f} s; its log: {log}")
            raise
        _tidy(cell_dir, keep_checkpoints, keep_exports)
        _say(f"{head}: {_score_text(cell_dir / RESULTS_JSON, split)} ({time.perf_counter() - t0:.0f} s)")
    rows = []
    for cell in cells:
        results = json.loads((root / cell.name / RESULTS_JSON).read_text())
        for task in tasks_of(cell):
            for metric, score in cell_scores(results, split, task).items():
                rows.append({**cell.labels, "task": task, "metric": metric, "score": score, "dir": cell.name})
    return rows


def chance_references(config: Optional[str], overrides: list[str], cells: list[Cell], tasks_of: Any,
                      split: str = "test") -> dict:
    """Per task, what a constant predictor scores on its evaluated rows (:func:`chance_reference`, from the first
    cell that reports the task; rank 0 only, empty elsewhere)."""
    out: dict = {}
    if not hdist.is_main():
        return out
    for cell in cells:
        for task in tasks_of(cell):
            if task in out:
                continue
            try:
                out[task] = chance_reference(load_config(config, [*overrides, *cell.overrides]), task, split)
            except (HyperscaleError, ValueError, OSError) as e:  # the tables go on without this task's chance
                hdist.log0(f"no chance reference for {task}: {e}")
                out[task] = {}
    return {task: ref for task, ref in out.items() if ref}


def write_reports(root: Path, rows: list[dict], x_key: str, x_label: str, title: str, plot_name: str,
                  x_column: Optional[str] = None, chance: Optional[dict] = None, split: str = "test") -> dict:
    """``results.json``, ``results.md`` and the plot (rank 0 only). Returns the paths written (and, under
    ``console``, the compact table :func:`print_reports` prints); without
    matplotlib the JSON and Markdown are written and the log says how to get the plot. ``x_column``: the
    table's name for x (default ``x_label``, the plot's axis label). ``chance``: per task, a constant predictor's
    scores (:func:`chance_references`), shown beside the scores."""
    paths: dict[str, Path] = {}
    if not hdist.is_main():
        return paths
    summary = report.summarize(rows, x_key)
    report.write_json(root / RESULTS_JSON, {"rows": rows, "summary": summary, "chance": chance or {}})
    table = report.markdown_table(summary, x_column or x_label, chance=chance, split=split)
    write_text_atomic(root / RESULTS_MD, f"# {title}\n\n{table}")
    paths.update(console=report.console_table(summary, x_column or x_label, chance=chance, split=split),
                 json=root / RESULTS_JSON, markdown=root / RESULTS_MD)
    try:
        report.plot_curves(summary, root / plot_name, x_label=x_label, title=title, chance=chance, split=split)
    except ConfigError as e:
        hdist.log0(f"no plot: {e}")
    else:
        paths["plot"] = root / plot_name
    return paths


def print_reports(paths: dict) -> None:
    """A compact table (every task's table is in ``results.md``), then where each report is (rank 0: the only rank
    with ``paths``)."""
    if not paths:
        return
    print(paths["console"], end="")
    for kind, path in paths.items():
        if kind != "console":
            print(f"{kind:>9}: {path}")


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{what} must be positive integers, got {text!r}")
    return sorted(set(values))
