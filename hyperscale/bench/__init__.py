"""Side-by-side training-step benchmark: HyperFormer++ against the frozen-backbone floor and the usual alternatives.

In one process, on one device, with one backbone shape, batch and sequence lengths (random token ids,
random weights from the offline presets), it times training steps of:

``floor``
    the frozen backbone, forward + backward through every layer (the input embeddings require grad,
    so backward reaches the first encoder layer), no adapters and no optimizer: no method that puts
    something in every layer can be cheaper;
``hyperformer++``
    ``HyperscaleModel`` (method ``hyperformer++``) in a plain PyTorch loop;
``ds-zeroN``
    the same model under a DeepSpeed engine built from the trainer's own ``build_ds_config`` (one
    process, world size 1), for each ZeRO stage in ``--zero-stages``; the default run config uses ZeRO-2;
``adapters``
    static per-task bottleneck adapters (method ``adapters``), plain loop;
``lora``
    PEFT LoRA r=8 on q and v (skipped with a note when ``peft`` is not importable), plain loop;
``finetune``
    full fine-tuning (method ``finetune``), plain loop;
``floor-compiled``, ``hyperformer++-compiled``, ``ds-zeroN-compiled`` (opt-in through ``--only``; ``--compile-backend``)
    the floor with the backbone under ``torch.compile``: the floor every method could reach with
    compiled kernels; ``hyperformer++-compiled`` the plain-loop HyperFormer++ compiled in place, and
    ``ds-zeroN-compiled`` (N = 0-2) the trainer's engine with ``train.compile=true`` (``engine.compile``).

Every step computes the same loss as the trainer (token cross-entropy on fp32 logits, teacher forcing
with ``decoder_input_ids = shift_right(labels)``), clips gradients at the run config's ``grad_clip``
and takes an AdamW step with the run config's hyperparameters.

Precision (``--precision bf16``): every row computes in bf16. Plain-loop rows (``--plain-mode
master``, the default) hold the whole model in bf16 and keep fp32 master copies of the trainable
weights, updated by ``torch.optim.AdamW`` (fused on CUDA) and copied back after each step: the same
arithmetic as DeepSpeed's bf16 mode, so a ``ds-zeroN`` row over the ``hyperformer++`` row is the
engine's own overhead. ``--plain-mode amp`` instead keeps trainable weights in fp32 and frozen ones in
bf16 and runs the forward under ``torch.autocast`` (what a hand-written loop often does; it pays
fp32->bf16 casts of the trainable weights inside every forward). ``--precision fp32``: fp32 throughout.

Timing: ``--warmup`` untimed steps, then ``--steps`` timed steps, each bracketed by
``torch.cuda.synchronize()`` on CUDA; the median is reported. Memory: on CUDA the peak of
``torch.cuda.max_memory_allocated`` from building the configuration to its last step; on CPU the peak
resident set size sampled every 5 ms over the same span, minus the RSS before building it (an
approximation: memory freed by an earlier configuration and reused does not show).

Building (``--build-dtype auto``, the default): the backbone and the adapter bank are constructed
directly in the compute dtype (bf16 under ``--precision bf16``) and, on CUDA, directly on the device
(``torch.device`` context + default dtype), so an 11B backbone never exists in fp32 or on the host
(22 GB of bf16 weights instead of 44 GB fp32 plus the cast). ``--build-dtype fp32`` builds in fp32
and casts, as the trainer does for a preset.

``--gradient-checkpointing`` enables HF activation checkpointing (``gradient_checkpointing_enable(
gradient_checkpointing_kwargs={"use_reentrant": False})``) on the backbone of every row; each row
records whether it was active. ``HyperscaleModel`` replays its adapter context inside the recomputation.

``--max-batch-search`` (DeepSpeed rows): after the rows are timed at ``--batch``, search the largest
batch that fits for each ``ds-zeroN`` row: doubling from ``--batch`` up to ``--max-batch-cap``, then
bisection down to ``--search-resolution``, within ``--search-seconds``. Each try builds the row afresh,
runs one warm-up and ``--search-steps`` timed steps, and is freed completely (``engine.destroy()``,
``gc.collect()``, ``torch.cuda.empty_cache()``) before the next; an out-of-memory error
(``torch.cuda.OutOfMemoryError``) means "does not fit", any other error stops the search.
``--fake-mem-limit-mb`` raises a simulated out-of-memory error in any row whose measured peak
exceeds the limit (CPU: sampled RSS; CUDA: ``max_memory_allocated``): the search logic runs on a
CPU, and a GPU run can ask what a smaller card would fit.

The eval benchmark (``--eval``) compares rank classification with greedy generation
(``hyperscale.training.evaluate``) on the same examples of a classification task.

The modules: :mod:`.settings` (what a run measures, the arguments), :mod:`.rows` (building and timing the
rows), :mod:`.search` (the largest-batch search), :mod:`.evalbench` (the eval benchmark), :mod:`.report`
(environment, ratios, table, files), :mod:`.runtime` (memory sampling, out-of-memory classification, the
one-process DeepSpeed group); this one runs them (:func:`run_benchmark`) and is the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import traceback
from typing import Any, Callable, Optional

import torch

from ..modeling.presets import preset_config
from .evalbench import run_eval
from .report import add_ratios, environment, format_search, format_table, write_result
from .rows import ROW_FIELDS, _make_batch, _process_warmup, bench_run_config, measure, run_rounds, trainer_ds_config
from .runtime import SimulatedOutOfMemoryError, is_oom, memory_metric
from .search import SEARCH_FIELDS, run_max_batch_search, run_max_batch_searches, search_max_batch
from .settings import ALL_CONFIGS, DEFAULT_TASKS, BenchSettings, add_arguments, settings_from_args

__all__ = [
    "ALL_CONFIGS", "DEFAULT_TASKS", "ROW_FIELDS", "SEARCH_FIELDS", "BenchSettings", "SimulatedOutOfMemoryError",
    "add_arguments", "add_ratios", "bench_run_config", "build_arg_parser", "environment", "format_search",
    "format_table", "is_oom", "main", "measure", "run_benchmark", "run_eval", "run_from_args",
    "run_max_batch_search", "search_max_batch", "settings_from_args", "trainer_ds_config",
]


def _timed_rows(s: BenchSettings, vocab: int, rows: list[dict], publish: Callable[[], None]) -> dict[str, float]:
    """The rows at ``s.batch`` (after the process warm-up), ratios kept current; the seconds each took."""
    batch = _make_batch(s, vocab)
    _process_warmup(s, batch)

    def on_row() -> None:
        add_ratios(rows)
        publish()

    return run_rounds(s, batch, rows, on_row)


def _eval_into(s: BenchSettings, result: dict, publish: Callable[[], None]) -> None:
    print("[bench] eval ...", file=sys.stderr, flush=True)
    try:
        result["eval"] = run_eval(s)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        result["eval"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    publish()


def run_benchmark(s: BenchSettings, on_update: Optional[Callable[[dict], None]] = None) -> dict:
    """Measure every configuration of ``s`` (and the eval benchmark); ``on_update(result)`` is called
    after each one with the result so far (ratios filled in), e.g. to keep a JSON file current."""
    if s.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if s.threads:
        torch.set_num_threads(s.threads)
    rows: list[dict] = []
    result: dict[str, Any] = {
        "settings": dataclasses.asdict(s), "environment": environment(s), "rows": rows,
        "memory_metric": memory_metric(s.device),
    }

    def publish() -> None:
        if on_update is not None:
            on_update(result)

    if s.configs:
        vocab = preset_config(s.preset).vocab_size
        seconds = _timed_rows(s, vocab, rows, publish)  # its batch is freed on return
        if s.max_batch_search:
            gc.collect()
            searches: list[dict] = []
            result["max_batch_search"] = searches
            run_max_batch_searches(s, rows, vocab, seconds, searches, publish)
    if s.eval:
        _eval_into(s, result, publish)
    return result


# =============================================================================================== CLI
def build_arg_parser(prog: str = "hyperscale bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    return add_arguments(p)


def run_from_args(args: argparse.Namespace) -> int:
    s = settings_from_args(args)

    def write(result: dict) -> None:
        write_result(result, args.json_out, args.table_out)

    result = run_benchmark(s, on_update=write)
    write(result)
    print(format_table(result), flush=True)
    # with --max-batch-search an out-of-memory row at the start batch is a search result, not a failure
    failed = [r["name"] for r in result["rows"] if r["status"] == "error" and not (s.max_batch_search and r["oom"])]
    if "error" in (result.get("eval") or {}):
        failed.append("eval")
    failed += [f"max-batch search {sr.get('row')}" for sr in result.get("max_batch_search") or []
               if sr.get("status") == "error"]
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_from_args(build_arg_parser().parse_args(argv))
