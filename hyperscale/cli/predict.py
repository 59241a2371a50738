"""``hyperscale predict EXPORT --task rte TEXT ...``: predictions of an export, without DeepSpeed, on a GPU when
there is one; sources are cut at the run's ``data.max_source_length`` and the model computes in the run's precision
(``export.json``), as the trainer's evaluation did."""
from __future__ import annotations

import argparse

from ..data.specs import registry_for_export
from ..training.evaluate import predict_for_task
from ..training.export import load_export, read_export_info
from .eval import FALLBACK


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict with an export: hyperscale predict OUT --task rte 'sentence1: ...'")
    p.add_argument("export", help="directory written by `hyperscale export` or save_pretrained")
    p.add_argument("--task", required=True, help="task name the inputs belong to")
    p.add_argument("texts", nargs="+", help="source texts, formatted as the task's inputs")
    p.add_argument("--mode", choices=("generate", "rank"), default="generate")
    p.add_argument("--backbone", default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--device", default="auto",
                   help="auto (a GPU when CUDA sees one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: the run's train.precision (export.json), else bf16 on a GPU and fp32 on the CPU")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    rec = (read_export_info(args.export) or {}).get("evaluation") or {}
    model, tokenizer = load_export(args.export, args.backbone, device=args.device,
                                   dtype=args.dtype if args.dtype != "auto" else rec.get("precision"))
    spec = registry_for_export(args.export).get(args.task)  # a built-in task or one the export records
    if model.bank is not None:
        model.task_index(args.task)  # an unknown task fails here, listing the model's tasks
    texts = list(args.texts)
    if model.config.method == "finetune":  # trained with the task-name prefix (data.tasks.format_source)
        texts = [t if t.startswith(spec.name + " ") else f"{spec.name} {t}" for t in texts]
    preds = predict_for_task(model, tokenizer, spec, args.task, texts, mode=args.mode, batch_size=32,
                             device=next(model.parameters()).device,
                             max_source_length=rec.get("max_source_length", FALLBACK["max_source_length"]),
                             max_target_tokens=args.max_new_tokens)
    for text, pred in zip(args.texts, preds):
        if spec.is_regression and not _is_number(pred):  # shown raw and flagged, never an empty column
            print(f"{pred!r}\t(not a number: the output cannot be read as a score)\t{text}")
            continue
        name = (spec.label_names[int(pred)] if spec.rank_labels() and pred.isdigit() and int(pred) < len(spec.label_names)
                else "")
        print(f"{pred}\t{name}\t{text}" if name else f"{pred}\t{text}")
    return 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
