"""The ``hyperscale`` command: train, eval, export, predict, params, slurm, bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train import build_arg_parser

    p = sub.add_parser("train", help="train (embedded tiny default run without arguments)",
                       parents=[build_arg_parser()], add_help=False, conflict_handler="resolve")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .train import run

    run(args)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="ZeRO checkpoint -> standalone weights (no DeepSpeed needed to use them)")
    p.add_argument("checkpoint", help="a run directory, its checkpoints/ directory, or one step-* checkpoint")
    p.add_argument("out", help="output directory (must not hold an export already)")
    p.add_argument("--materialize", action="store_true",
                   help="also write every task's generated adapters as static weights into OUT/materialized")
    p.add_argument("--backbone", default=None, help="backbone to use instead of the one recorded in the checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from .training.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, materialize=args.materialize, backbone=args.backbone,
                            overwrite=args.overwrite)
    print(f"exported to {out}")
    return 0


def _load_export(path: str, backbone: Optional[str]):
    from .data.tokenization import default_tokenizer, load_tokenizer
    from .modeling.model import HyperscaleModel

    model = HyperscaleModel.from_pretrained(path, backbone=backbone)
    model.eval()
    tok_dir = Path(path) / "tokenizer"
    tokenizer = load_tokenizer(str(tok_dir)) if tok_dir.is_dir() else default_tokenizer()
    return model, tokenizer


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict with an export: hyperscale predict OUT --task rte 'sentence1: ...'")
    p.add_argument("export", help="directory written by `hyperscale export` or save_pretrained")
    p.add_argument("--task", required=True, help="task name the inputs belong to")
    p.add_argument("texts", nargs="+", help="source texts, formatted as the task's inputs")
    p.add_argument("--mode", choices=("generate", "rank"), default="generate")
    p.add_argument("--backbone", default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    import torch

    from .data.tasks import get_task
    from .training.evaluate import predict_task

    model, tokenizer = _load_export(args.export, args.backbone)
    spec = get_task(args.task)
    if model.bank is not None:
        model.task_index(args.task)  # an unknown task fails here, listing the model's tasks
    texts = list(args.texts)
    if model.config.method == "finetune":  # trained with the task-name prefix (data.tasks.format_source)
        texts = [t if t.startswith(spec.name + " ") else f"{spec.name} {t}" for t in texts]
    labels = None if spec.is_regression else list(spec.label_strings())
    preds = predict_task(model, tokenizer, args.task, texts, mode=args.mode, label_strings=labels,
                         max_target_tokens=args.max_new_tokens or spec.max_target_length + 1, batch_size=32,
                         device=torch.device("cpu"), max_source_length=512)
    for text, pred in zip(args.texts, preds):
        name = spec.label_names[int(pred)] if labels and pred.isdigit() and int(pred) < len(spec.label_names) else ""
        print(f"{pred}\t{name}\t{text}" if name else f"{pred}\t{text}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import torch

    from .data.loading import load_multitask_splits
    from .data.metrics import average_metrics, compute_task_metrics
    from .data.tasks import get_task
    from .train import format_results
    from .training.evaluate import predict_task

    model, tokenizer = _load_export(args.export, args.backbone)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyperscale", description="Multi-task T5 with shared hypernetworks, on DeepSpeed.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_predict(sub)
    for mod_name in ("params_cli", "slurm_cli", "bench_cli"):
        try:
            mod = __import__(f"hyperscale.{mod_name}", fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # overrides may follow --resume: argparse mixes them only without subparsers
        from .train import build_arg_parser

        args = build_arg_parser("hyperscale train").parse_intermixed_args(argv[1:])
        args.func = _train
    else:
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"hyperscale: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
