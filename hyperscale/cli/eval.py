"""``hyperscale eval EXPORT [--tasks rte,cb] [--split test] [--device auto]``: evaluate an export on tasks'
validation or test splits, without DeepSpeed, on a GPU when there is one.

Every setting left out is the one the trainer evaluated with (``export.json``'s ``evaluation``, from the run's
config: data, split seed, n_val/n_test, STS-B grid, source length, mode, batch size, examples per task, precision),
so that the scores are the run's ``results.json``. An export without that record (``save_pretrained``, or written
before it existed) falls back to fixed defaults, with a note."""
from __future__ import annotations

import argparse
import json
import sys

from ..data.loading import load_multitask_splits
from ..data.metrics import average_metrics
from ..data.specs import registry_for_export
from ..data.tasks import DEFAULT_STSB_GRID
from ..errors import ConfigError
from ..data.chance import constant_predictor_scores, metric_name
from ..modeling.io import read_config
from ..training.evaluate import first_rows, score_task
from ..training.export import inference_device, load_export, read_export_info

# settings of an export that records none (flag -> value): what this command used before exports recorded them
FALLBACK = {"data_dir": "sample", "split_seed": 42, "max_source_length": 512, "mode": "rank", "batch_size": 32}


def _recorded(key: str) -> str:
    return f"(default: the run's {key}, from export.json)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate an export on tasks' validation or test splits")
    p.add_argument("export")
    p.add_argument("--tasks", default=None, help="comma-separated (default: the tasks the run evaluated, else the "
                                                 "export's tasks)")
    p.add_argument("--data-dir", default=None,
                   help="'sample' (shipped), 'hub', or a GLUE-layout directory " + _recorded("data.data_dir"))
    p.add_argument("--split", choices=("validation", "test"), default="test")
    p.add_argument("--mode", choices=("rank", "generate"), default=None, help=_recorded("eval.mode"))
    p.add_argument("--n", type=int, default=None,
                   help="evaluate only the first N examples per task (default: the run's eval.max_examples; all)")
    p.add_argument("--batch-size", type=int, default=None, help=_recorded("eval.batch_size"))
    p.add_argument("--seed", type=int, default=None, help="split seed " + _recorded("data.split_seed"))
    p.add_argument("--max-source-length", type=int, default=None, help=_recorded("data.max_source_length"))
    p.add_argument("--device", default="auto",
                   help="auto (a GPU when CUDA sees one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: the run's train.precision (its scores), else bf16 on a GPU and fp32 on the CPU")
    p.add_argument("--backbone", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p


def _check_positive(flag: str, value, hint: str = "") -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be at least 1{hint}, got {value}")


def run(args: argparse.Namespace) -> int:
    _check_positive("--batch-size", args.batch_size)
    _check_positive("--n", args.n, " (leave it out for every example)")
    _check_positive("--max-source-length", args.max_source_length)
    device = inference_device(args.device)  # a GPU asked for and not there: said before anything else
    known = list(read_config(args.export).tasks)  # a path that is not an export: said before anything loads
    asked = [t for t in args.tasks.split(",") if t] if args.tasks else None
    unknown = [t for t in asked or [] if t not in known]
    if unknown:
        raise ConfigError(f"--tasks {','.join(unknown)}: not a task of the export {args.export} (its tasks: "
                          f"{', '.join(known)})")
    info = read_export_info(args.export) or {}
    rec = info.get("evaluation") or {}
    given = {"data_dir": args.data_dir, "split_seed": args.seed, "max_source_length": args.max_source_length,
             "mode": args.mode, "batch_size": args.batch_size}
    unrecorded = [k for k, v in given.items() if v is None and k not in rec]
    if unrecorded:
        print(f"note: {args.export} records no evaluation settings (export.json); using "
              + ", ".join(f"{k}={FALLBACK[k]}" for k in unrecorded), file=sys.stderr)
    s = {k: v if v is not None else rec.get(k, FALLBACK[k]) for k, v in given.items()}
    n = args.n if args.n is not None else rec.get("max_examples")

    model, tokenizer = load_export(args.export, args.backbone, device=device,
                                   dtype=args.dtype if args.dtype != "auto" else rec.get("precision"))
    tasks = asked or rec.get("tasks") or model.tasks
    registry = registry_for_export(args.export)  # the built-in tasks and the export's own (export.json task_specs)
    splits = load_multitask_splits(tasks, None if s["data_dir"] == "sample" else s["data_dir"], registry=registry,
                                   seed=s["split_seed"],
                                   n_val=rec.get("n_val"), n_test=rec.get("n_test"),
                                   stsb_grid=rec.get("stsb_grid", DEFAULT_STSB_GRID),
                                   add_prefix=model.config.method == "finetune")
    inputs_to = next(model.parameters()).device  # the model's device (the first GPU of one spread over several)
    per_task, chance, examples = {}, {}, {}
    for task in tasks:
        ds = first_rows(splits[task][args.split], n)
        spec = registry.get(task)
        per_task[task] = score_task(model, tokenizer, spec, task, ds, mode=s["mode"], batch_size=s["batch_size"],
                                    device=inputs_to, max_source_length=s["max_source_length"])
        chance[task] = constant_predictor_scores(spec, ds["target"])
        examples[task] = len(ds)
    result = {args.split: {"step": info.get("step"), "tasks": per_task, "average": average_metrics(per_task)}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(args.export, args.split, info.get("step"), per_task, chance, examples))
    return 0


def format_table(export, split: str, step, per_task: dict, chance: dict, examples: dict) -> str:
    """The scores of every task and metric, each named, beside what a constant answer scores on the same examples
    (``†``: a constant predictor reaches the score); headed by the split, the export's step and the export."""
    where = f"step {step}" if step is not None else "step unknown: the export records none"
    lines = [f"{split} ({where}): {export}; scores in percent; chance: the best constant answer on the same examples",
             f"  {'task':<10} {'examples':>8}  {'metric':<10} {'score':>7} {'chance':>7}"]
    for task, metrics in per_task.items():
        for k, (metric, value) in enumerate(metrics.items()):
            ref = chance.get(task, {}).get(metric)
            mark = " †" if ref is not None and round(value, 2) <= round(ref["score"], 2) else ""
            head = f"{task:<10} {examples.get(task, ''):>8}" if k == 0 else " " * 19
            ref_text = f"{ref['score']:7.2f}" if ref is not None else f"{'–':>7}"
            lines.append(f"  {head}  {metric_name(metric):<10} {value:7.2f} {ref_text}{mark}")
    avg = average_metrics(per_task)
    lines.append(f"  {'average':<10} {'':>8}  " + "  ".join(f"{k} {v:.2f}" for k, v in avg.items()))
    if any(ln.endswith(" †") for ln in lines):
        lines.append("  †: a constant predictor reaches this score (it says nothing about the model)")
    return "\n".join(lines)
