"""``hyperscale adapt EXPORT --tasks cb --out DIR``: few-shot transfer of a multi-task model to new tasks.

Trains, for every new task, k and seed, what ``--train`` names (the new task embedding; plus the hypernetwork;
plus T5's layer norms) on k examples, and with ``--baseline`` a multi-task finetune export on the same examples;
then writes ``DIR/results.json``, ``DIR/results.md`` (every metric of the new tasks beside a constant predictor's
score; mean ± std over 2+ seeds) and ``DIR/fewshot.png``. Every run is an ordinary training run (any launcher,
DeepSpeed, checkpoints) in its own directory, with its output in ``cell.log`` there (the console gets one line per
run); rerunning continues where it stopped. A finished run keeps its results; its checkpoints and export are
removed unless ``--keep-checkpoints`` / ``--keep-exports``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments import fewshot
from ..experiments.grid import chance_references, parse_int_list, print_reports, run_grid, write_reports


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("adapt", help="few-shot transfer of a multi-task export to new tasks (k examples each)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", help="export of the multi-task model (a run's export/ or hyperscale export's output)")
    p.add_argument("overrides", nargs="*", help="run config overrides for every run, e.g. train.max_steps=200")
    p.add_argument("--tasks", required=True, help="new tasks, comma-separated (e.g. cb,boolq,scitail)")
    p.add_argument("--out", required=True, help="experiment directory (rerun with it to continue)")
    p.add_argument("--k", default=",".join(map(str, fewshot.DEFAULT_K)),
                   help="training examples per task, comma-separated (default %(default)s)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per (method, task, k) (default %(default)s)")
    p.add_argument("--train", default=",".join(fewshot.DEFAULT_MODES),
                   help="what learns, comma-separated: embedding, embedding+hypernet, embedding+hypernet+norms "
                        "(default: all three)")
    p.add_argument("--init", default="mean", help="the new task embedding: mean, random or a task of the export")
    p.add_argument("--baseline", default=None, help="a multi-task finetune export, fine-tuned on the same examples")
    p.add_argument("--config", default=None, help="base run config (default: the embedded default)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the checkpoints of finished runs (default: removed once a run's results are written)")
    p.add_argument("--keep-exports", action="store_true",
                   help="keep the standalone export of every finished run (default: removed; results are kept)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    export = Path(args.export)
    tasks = [t for t in args.tasks.split(",") if t]
    cells = fewshot.adapt_cells(export, tasks, parse_int_list(args.k, "--k"), args.seeds,
                                [m for m in args.train.split(",") if m], Path(args.baseline) if args.baseline else None,
                                args.init)
    spec = {"command": "adapt", "export": str(export.resolve()), "init": args.init,
            "baseline": str(Path(args.baseline).resolve()) if args.baseline else None,
            "config": args.config, "overrides": list(args.overrides)}
    root = Path(args.out)
    tasks_of = lambda c: [c.labels["new_task"]]  # noqa: E731
    rows = run_grid(root, spec, args.config, list(args.overrides), cells, tasks_of,
                    keep_checkpoints=args.keep_checkpoints, keep_exports=args.keep_exports)
    chance = chance_references(args.config, list(args.overrides), cells, tasks_of)
    paths = write_reports(root, rows, "k", "training examples per task (k)", "Few-shot transfer", "fewshot.png",
                          x_column="k", chance=chance)
    print_reports(paths)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Overrides may come before or after the options (intermixed)."""
    return add_parser(argparse.ArgumentParser(prog="hyperscale").add_subparsers()).parse_intermixed_args(argv)
