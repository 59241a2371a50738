"""``hyperscale eval EXPORT [--tasks rte,cb] [--split test]``: evaluate an export on tasks' validation or test
splits (the split protocol of training), on the CPU, without DeepSpeed."""
from __future__ import annotations

import argparse
import json

import torch

from ..data.loading import load_multitask_splits
from ..data.metrics import average_metrics, compute_task_metrics
from ..data.tasks import get_task
from ..training.evaluate import predict_task
from ..training.export import load_export
from ..training.recipe import format_results


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate an export on tasks' validation or test splits")
    p.add_argument("export")
    p.add_argument("--tasks", default=None, help="comma-separated (default: the export's tasks)")
    p.add_argument("--data-dir", default="sample", help="'sample' (shipped), 'hub', or a GLUE-layout directory")
    p.add_argument("--split", choices=("validation", "test"), default="test")
    p.add_argument("--mode", choices=("rank", "generate"), default="rank")
    p.add_argument("--n", type=int, default=None, help="evaluate only the first N examples per task")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42, help="split seed (must match training's data.split_seed)")
    p.add_argument("--backbone", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_export(args.export, args.backbone)
    tasks = args.tasks.split(",") if args.tasks else model.tasks
    splits = load_multitask_splits(tasks, None if args.data_dir == "sample" else args.data_dir, seed=args.seed,
                                   add_prefix=model.config.method == "finetune")
    per_task = {}
    for task in tasks:
        ds = splits[task][args.split]
        if args.n is not None:
            ds = ds.select(range(min(args.n, len(ds))))
        spec = get_task(task)
        labels = None if spec.is_regression else list(spec.label_strings())
        preds = predict_task(model, tokenizer, task, ds["source"], mode=args.mode, label_strings=labels,
                             max_target_tokens=spec.max_target_length + 1, batch_size=args.batch_size,
                             device=torch.device("cpu"), max_source_length=512)
        per_task[task] = compute_task_metrics(task, preds, ds["target"])
    result = {args.split: {"step": "export", "tasks": per_task, "average": average_metrics(per_task)}}
    print(json.dumps(result, indent=2) if args.json else format_results(result))
    return 0
