#!/usr/bin/env python3
"""torch.compile vs eager, forward + backward, for the frozen-backbone floor and for HyperFormer++ (issue 14).

    python benchmarks/compile_cpu.py [--preset t5-small] [--batch 8] [--src-len 64] [--tgt-len 8]
                                     [--steps 3] [--rounds 2] [--threads 1] [--json-out FILE]

Rows, all in one process, one backbone preset (random weights, the same seed for every row), train mode
(dropout as configured), no optimizer (forward + backward only, gradients dropped after each step):

* ``floor``: the frozen backbone, ``inputs_embeds`` requiring grad so that backward runs through every
  layer (the floor of ``hyperscale bench``); compiled: ``torch.compile(backbone)``.
* ``hyperformer++``: ``HyperscaleModel`` (method hyperformer++, layer norms and the hypernetwork trainable),
  task ids a host tensor of per-example ids as the trainer's collator gives them (``--task-mix mixed``:
  ids cycle over the tasks; ``single``: one 0-dim id for the whole batch); compiled: ``torch.compile(model)``, i.e.
  what ``deepspeed_engine.compile()`` does to ``engine.module``.

The loss is the trainer's (``training.engine.per_example_loss``) computed outside the compiled module,
as ``forward_loss`` does. Compiled rows report the first step's wall time (Dynamo tracing + AOTAutograd +
inductor code generation for forward and backward: "compile s"), the number of graphs Dynamo compiled
and the graph breaks it counted, then the median of the timed steps. Timed steps run in ``--rounds``
interleaved rounds (every row once per round) so that load drift on a shared machine hits every row alike.
Ratios are medians of the same run. Works on CUDA too (``--device cuda --dtype bf16``).

Compile times are cold: inductor's on-disk caches go to a fresh temporary directory unless
``TORCHINDUCTOR_CACHE_DIR`` is set or ``--warm-cache`` is given (then the default cache is used, and a
second run compiles much faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--warm-cache" not in sys.argv:  # before torch is imported: cold compile times
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="compile_cpu_inductor_"))

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from hyperscale.modeling import HyperscaleModel  # noqa: E402
from hyperscale.modeling.io import load_backbone  # noqa: E402
from hyperscale.training.engine import per_example_loss  # noqa: E402

TASKS = ["rte", "mrpc", "sst2", "cola", "stsb", "cb"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _batch(args: argparse.Namespace, vocab: int) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    b = args.batch
    ids = torch.randint(2, vocab, (b, args.src_len), generator=g)
    labels = torch.randint(2, vocab, (b, args.tgt_len), generator=g)
    # mixed: one id per example; single: one 0-dim id for the batch (the single-task path, eager and compiled)
    task_ids = (torch.arange(b) % len(TASKS)) if args.task_mix == "mixed" else torch.tensor(0)
    dev = torch.device(args.device)
    return {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev), "labels": labels.to(dev),
            "task_ids": task_ids}  # task ids stay on the host, as the collator leaves them


def _backbone(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    bb = load_backbone(f"preset:{args.preset}")[0]
    if args.dropout is not None:
        for mod in bb.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = args.dropout
    return bb.to(device=args.device, dtype=_dtype(args)).train()


def _dtype(args: argparse.Namespace) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]


def _floor(args: argparse.Namespace, batch: dict, compiled: bool) -> tuple[Callable[[], Any], Any]:
    bb = _backbone(args)
    bb.requires_grad_(False)
    embed = bb.get_input_embeddings()
    dec = bb._shift_right(batch["labels"])
    counter = CompileCounterWithBackend("inductor") if compiled else None
    fwd = torch.compile(bb, backend=counter) if compiled else bb

    def step() -> torch.Tensor:
        inputs_embeds = embed(batch["input_ids"]).detach().requires_grad_(True)
        out = fwd(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"], decoder_input_ids=dec)
        loss = per_example_loss(out.logits, batch["labels"]).mean()
        loss.backward()
        return loss

    return step, counter


def _hyperformer(args: argparse.Namespace, batch: dict, compiled: bool) -> tuple[Callable[[], Any], Any]:
    model = HyperscaleModel.from_backbone(_backbone(args), TASKS, reduction_factor=args.reduction_factor)
    model.to(device=args.device, dtype=_dtype(args)).train()
    dec = model.backbone._shift_right(batch["labels"])
    counter = CompileCounterWithBackend("inductor") if compiled else None
    fwd = torch.compile(model, backend=counter) if compiled else model
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        out = fwd(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec,
                  task_ids=batch["task_ids"])
        loss = per_example_loss(out.logits, batch["labels"]).mean()
        loss.backward()
        for p in params:
            p.grad = None
        return loss

    return step, counter


ROWS = {"floor": (_floor, False), "floor-compiled": (_floor, True),
        "hyperformer++": (_hyperformer, False), "hyperformer++-compiled": (_hyperformer, True)}


def _timed(step: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="t5-small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--src-len", type=int, default=64)
    p.add_argument("--tgt-len", type=int, default=8)
    p.add_argument("--reduction-factor", type=int, default=32)
    p.add_argument("--task-mix", choices=("mixed", "single"), default="mixed")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first (compiling) step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout rate (0.1)")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--json-out", default=None)
    p.add_argument("--warm-cache", action="store_true", help="use inductor's default on-disk cache")
    args = p.parse_args()
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    names = args.rows.split(",")
    vocab = _backbone(args).config.vocab_size
    batch = _batch(args, vocab)
    steps: dict[str, Callable[[], Any]] = {}
    compile_counters: dict[str, Any] = {}
    result: dict[str, dict] = {}
    torch._dynamo.reset()
    for name in names:  # build, compile (first step) and warm up every row
        build, compiled = ROWS[name]
        counters.clear()
        step, counter = build(args, batch, compiled)
        first = _timed(step, args.device)
        for _ in range(args.warmup):
            _timed(step, args.device)
        row = {"first_step_s": round(first, 2), "times_s": []}
        if counter is not None:
            row["graphs"] = counter.frame_count
            row["graph_breaks"] = sum(counters["graph_break"].values())
        result[name] = row
        steps[name] = step
        compile_counters[name] = counter
        print(f"[{name}] first step {first:.1f} s" + (f", {row['graphs']} graph(s), {row['graph_breaks']} break(s)"
                                                     if counter is not None else ""), flush=True)
    for r in range(args.rounds):
        for name in names:
            result[name]["times_s"] += [_timed(steps[name], args.device) for _ in range(args.steps)]
    for name in names:  # a recompile during the timed steps would show here
        if compile_counters[name] is not None:
            result[name]["graphs_after_timing"] = compile_counters[name].frame_count
    for name, row in result.items():
        row["median_ms"] = round(1000 * statistics.median(row["times_s"]), 1)
        row["min_ms"] = round(1000 * min(row["times_s"]), 1)
        row["max_ms"] = round(1000 * max(row["times_s"]), 1)
    floor = result.get("floor", {}).get("median_ms")
    print(f"\n{args.preset}, batch {args.batch}, {args.src_len}+{args.tgt_len} tokens, {args.dtype}, {args.device}, "
          f"{args.threads} thread(s), task mix {args.task_mix}, dropout "
          f"{'preset' if args.dropout is None else args.dropout}, {args.rounds} rounds x {args.steps} steps")
    print("| row | ms/step (median) | min | max | x floor | x its eager row | first step s | graphs | breaks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in result.items():
        eager = result.get(name.removesuffix("-compiled"), {}).get("median_ms")
        xf = f"{row['median_ms'] / floor:.2f}" if floor else "-"
        xe = f"{row['median_ms'] / eager:.2f}" if eager and name.endswith("-compiled") else "-"
        print(f"| {name} | {row['median_ms']} | {row['min_ms']} | {row['max_ms']} | {xf} | {xe} | "
              f"{row['first_step_s']} | {row.get('graphs', '-')} | {row.get('graph_breaks', '-')} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "torch": torch.__version__,
                                                   "rows": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
