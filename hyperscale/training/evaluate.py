"""Evaluation: rank classification and greedy generation, sharded over ranks.

Rank classification scores every label string of a task (total log-likelihood of its tokens
given the source) and picks the best: no invalid outputs, one encoder pass and one decoder pass
over ``batch x labels`` rows. Generation decodes greedily up to the task's longest target.
Under ZeRO-3 every rank runs the same number of forwards (``synced_gpus``).

:func:`predict_for_task` and :func:`score_task` are the one evaluation of the trainer, ``hyperscale eval`` and
``hyperscale predict``: the same labels, target length and source cut for a task wherever it is evaluated.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.chance import constant_predictor_scores
from ..data.metrics import average_metrics, compute_task_metrics
from ..data.tasks import Task
from ..modeling.context import adapter_context
from ..modeling.model import HyperscaleModel
from . import distributed as hdist
from .config import RunConfig

logger = logging.getLogger(__name__)
ON_STDERR = {"stderr": True}  # evaluation lines: on stderr, as a progress bar is (hyperscale.errors.ConsoleHandler)


@torch.no_grad()
def rank_classify(model: HyperscaleModel, tokenizer: Any, task: str, sources: Sequence[str], labels: Sequence[str],
                  device: torch.device, max_source_length: int) -> list[str]:
    enc = tokenizer(list(sources), max_length=max_source_length, truncation=True, padding=True, return_tensors="pt")
    input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    lab = tokenizer(list(labels), padding=True, return_tensors="pt")
    lab_ids = lab["input_ids"].to(device)
    lab_ids = lab_ids.masked_fill(lab["attention_mask"].to(device) == 0, -100)
    b, k = input_ids.shape[0], lab_ids.shape[0]
    backbone = model.backbone
    use_ctx = model.bank is not None
    ctx = model.build_context(task, b) if use_ctx else None

    def run() -> torch.Tensor:
        enc_out = backbone.get_encoder()(input_ids=input_ids, attention_mask=mask)
        hidden = enc_out.last_hidden_state.repeat_interleave(k, dim=0)
        labels_rep = lab_ids.repeat(b, 1)  # row i*k + j = label j for example i
        out = backbone(encoder_outputs=(hidden,), attention_mask=mask.repeat_interleave(k, dim=0),
                       decoder_input_ids=backbone._shift_right(labels_rep))
        logp = F.log_softmax(out.logits.float(), dim=-1)
        tok = logp.gather(-1, labels_rep.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (tok * (labels_rep != -100)).sum(-1).view(b, k)

    if use_ctx:
        # the context's example index (if any) refers to the un-repeated batch; one task here -> None
        with adapter_context(ctx):
            scores = run()
    else:
        scores = run()
    best = scores.argmax(-1).tolist()
    return [labels[i] for i in best]


@torch.no_grad()
def generate(model: HyperscaleModel, tokenizer: Any, task: str, sources: Sequence[str], device: torch.device,
             max_source_length: int, max_new_tokens: int, synced_gpus: bool = False) -> list[str]:
    enc = tokenizer(list(sources), max_length=max_source_length, truncation=True, padding=True, return_tensors="pt")
    kwargs = {"task_ids": task} if model.bank is not None else {}
    out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, synced_gpus=synced_gpus,
                         **kwargs)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def predict_task(model: HyperscaleModel, tokenizer: Any, task: str, sources: Sequence[str], *, mode: str,
                 label_strings: Optional[Sequence[str]], max_target_tokens: int, batch_size: int,
                 device: torch.device, max_source_length: int, synced_gpus: bool = False) -> list[str]:
    """Predictions for ``sources`` (all ranks return the full, ordered list)."""
    rank, world = hdist.rank(), hdist.world_size()
    n = len(sources)
    if n == 0:
        return []
    per_rank = math.ceil(n / world)
    # every rank handles per_rank indices (the tail padded with the last example) in the same number of
    # batches, so collective forwards (ZeRO-3, synced_gpus) stay in step; padding is dropped after gathering
    mine = [min(i, n - 1) for i in range(rank * per_rank, (rank + 1) * per_rank)]
    preds: list[str] = []
    for start in range(0, per_rank, batch_size):
        texts = [sources[i] for i in mine[start:start + batch_size]]
        if mode == "rank" and label_strings:
            preds.extend(rank_classify(model, tokenizer, task, texts, label_strings, device, max_source_length))
        else:
            preds.extend(generate(model, tokenizer, task, texts, device, max_source_length, max_target_tokens,
                                  synced_gpus))
    if world > 1:
        preds = [p for part in hdist.all_gather_object(preds) for p in part]
    return preds[:n]


def predict_for_task(model: HyperscaleModel, tokenizer: Any, spec: Task, task: str, sources: Sequence[str], *,
                     mode: str, batch_size: int, device: torch.device, max_source_length: int,
                     max_target_tokens: Optional[int] = None, synced_gpus: bool = False) -> list[str]:
    """Predictions for ``sources`` of ``task`` (its :class:`~hyperscale.data.tasks.Task` ``spec``): rank
    classification over the task's labels where it has them and ``mode`` is rank, else generation of up to
    ``max_target_tokens`` (default: the task's longest target)."""
    return predict_task(model, tokenizer, task, sources, mode=mode, label_strings=spec.rank_labels(),
                        max_target_tokens=max_target_tokens or spec.max_target_length + 1, batch_size=batch_size,
                        device=device, max_source_length=max_source_length, synced_gpus=synced_gpus)


def first_rows(ds: Any, n: Optional[int]) -> Any:
    """The first ``n`` rows of a split (all of them for None)."""
    return ds if n is None else ds.select(range(min(n, len(ds))))


def score_task(model: HyperscaleModel, tokenizer: Any, spec: Task, task: str, rows: Any, *, mode: str,
               batch_size: int, device: torch.device, max_source_length: int, synced_gpus: bool = False) -> dict:
    """The task's metrics on ``rows`` (a split's ``source`` and ``target`` columns)."""
    preds = predict_for_task(model, tokenizer, spec, task, rows["source"], mode=mode, batch_size=batch_size,
                             device=device, max_source_length=max_source_length, synced_gpus=synced_gpus)
    return compute_task_metrics(spec, preds, rows["target"])


def evaluate_split(model: HyperscaleModel, tokenizer: Any, registry: Any, data: dict, tasks: Sequence[str],
                   split: str, *, mode: str, batch_size: int, max_examples: Optional[int], device: torch.device,
                   max_source_length: int, synced_gpus: bool = False,
                   on_task: Optional[Callable[[str, int, dict], None]] = None) -> tuple[dict, int]:
    """Every task's metrics on the first ``max_examples`` rows of its ``split`` (``data``: task -> split -> rows;
    ``registry``: the run's tasks), in eval mode; ``on_task(task, examples, metrics)`` after each task. Returns
    (task -> metrics, examples evaluated)."""
    was_training = model.training
    model.eval()
    per_task, n_examples = {}, 0
    for task in tasks:
        rows = first_rows(data[task][split], max_examples)
        per_task[task] = score_task(model, tokenizer, registry.get(task), task, rows, mode=mode,
                                    batch_size=batch_size, device=device, max_source_length=max_source_length,
                                    synced_gpus=synced_gpus)
        n_examples += len(rows)
        if on_task is not None:
            on_task(task, len(rows), per_task[task])
    if was_training:
        model.train()
    return per_task, n_examples


def run_evaluation(model: HyperscaleModel, tokenizer: Any, registry: Any, data: dict, tasks: Sequence[str], split: str,
                   cfg: RunConfig, step: int, world: int, device: torch.device, console: bool) -> dict:
    """A training run's evaluation of ``split`` at ``step`` under its ``eval`` settings, as ``RUN/eval`` and
    ``results.json`` record it (with ``chance``: per task and metric, the best constant answer's score on the same
    examples); with ``console`` (rank 0) one line on stderr, or a line per task under ``logging.verbose``."""
    t0 = time.perf_counter()

    def progress(task: str, n: int, metrics: dict) -> None:
        scores = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        logger.info(f"eval {split} step {step}: {task} ({n} examples) {scores}  [{time.perf_counter() - t0:.1f} s]",
                    extra=ON_STDERR)

    e = cfg.eval
    per_task, n_examples = evaluate_split(
        model, tokenizer, registry, data, tasks, split, mode=e.mode, batch_size=e.batch_size,
        max_examples=e.max_examples, device=device, max_source_length=cfg.data.max_source_length,
        synced_gpus=cfg.deepspeed.zero_stage == 3 and world > 1,
        on_task=progress if console and cfg.logging.verbose else None)
    # beside each score, what the best constant answer scores on the same examples (the results table shows it)
    chance = {task: {metric: ref["score"] for metric, ref in constant_predictor_scores(
        registry.get(task), first_rows(data[task][split], e.max_examples)["target"]).items()} for task in tasks}
    result = {"step": step, "split": split, "tasks": per_task, "average": average_metrics(per_task),
              "chance": chance, "seconds": time.perf_counter() - t0}
    if console and not cfg.logging.verbose:
        mean = result["average"].get("mean_all_metrics")
        logger.info(f"eval {split} step {step}: {len(per_task)} tasks, {n_examples:,} examples"
                    + (f", mean of all metrics {mean:.2f}" if mean is not None else "")
                    + f"  [{result['seconds']:.1f} s]", extra=ON_STDERR)
    return result
