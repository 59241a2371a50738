"""``hyperscale predict EXPORT --task rte TEXT ...``: predictions of an export, on the CPU, without DeepSpeed."""
from __future__ import annotations

import argparse

import torch

from ..data.tasks import get_task
from ..training.evaluate import predict_task
from ..training.export import load_export


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict with an export: hyperscale predict OUT --task rte 'sentence1: ...'")
    p.add_argument("export", help="directory written by `hyperscale export` or save_pretrained")
    p.add_argument("--task", required=True, help="task name the inputs belong to")
    p.add_argument("texts", nargs="+", help="source texts, formatted as the task's inputs")
    p.add_argument("--mode", choices=("generate", "rank"), default="generate")
    p.add_argument("--backbone", default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_export(args.export, args.backbone)
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
        if spec.is_regression and not _is_number(pred):  # shown raw and flagged, never an empty column
            print(f"{pred!r}\t(not a number: the output cannot be read as a score)\t{text}")
            continue
        name = spec.label_names[int(pred)] if labels and pred.isdigit() and int(pred) < len(spec.label_names) else ""
        print(f"{pred}\t{name}\t{text}" if name else f"{pred}\t{text}")
    return 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
