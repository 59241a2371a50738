"""``hyperscale sweep [CONFIG] --out DIR``: the low-resource sweep, every method at several training sizes.

Trains every method (``--methods``) with n examples per task (``--n-train``) for ``--seeds`` seeds, on the
config's tasks, then writes ``DIR/results.json``, ``DIR/results.md`` (every metric of every task and their average,
beside a constant predictor's score; mean ± std over 2+ seeds) and ``DIR/low_resource.png``. Every run is an
ordinary training run in its own directory, with its output in ``cell.log`` there (the console gets one line per
run); a finished run is not run again, keeps its results, and loses its checkpoints and export unless
``--keep-checkpoints`` / ``--keep-exports``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments import sweep
from ..experiments.grid import chance_references, parse_int_list, print_reports, run_grid, write_reports
from ..training.config import load_config, split_config_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="low-resource sweep: methods x training sizes x seeds, with table and plot",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None, help="base run config (default: the embedded default)")
    p.add_argument("overrides", nargs="*", help="run config overrides for every run, e.g. train.max_steps=500")
    p.add_argument("--out", required=True, help="experiment directory (rerun with it to continue)")
    p.add_argument("--n-train", default=",".join(map(str, sweep.DEFAULT_N)),
                   help="training examples per task, comma-separated (default %(default)s)")
    p.add_argument("--methods", default=",".join(sweep.DEFAULT_METHODS), help="comma-separated (default %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (method, n) (default %(default)s)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the checkpoints of finished runs (default: removed once a run's results are written)")
    p.add_argument("--keep-exports", action="store_true",
                   help="keep the standalone export of every finished run (default: removed; results are kept)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config, overrides = split_config_arg(args.config, args.overrides)
    cells = sweep.sweep_cells([m for m in args.methods.split(",") if m], parse_int_list(args.n_train, "--n-train"),
                              args.seeds)
    tasks = list(load_config(config, overrides).data.tasks)
    spec = {"command": "sweep", "config": config, "overrides": overrides}
    root = Path(args.out)
    rows = sweep.with_average(run_grid(root, spec, config, overrides, cells, lambda c: tasks,
                                       keep_checkpoints=args.keep_checkpoints, keep_exports=args.keep_exports))
    chance = sweep.with_average_chance(chance_references(config, overrides, cells, lambda c: tasks))
    paths = write_reports(root, rows, "n_train", "training examples per task (n)", "Low-resource sweep",
                          "low_resource.png", x_column="n", chance=chance)
    print_reports(paths)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Overrides may come before or after the options (intermixed)."""
    return add_parser(argparse.ArgumentParser(prog="hyperscale").add_subparsers()).parse_intermixed_args(argv)
