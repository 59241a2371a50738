"""The eval benchmark (``--eval``): rank classification against greedy generation
(``hyperscale.training.evaluate``) on the same examples of a classification task, same model (HyperFormer++)."""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..data.loading import read_local_split, resolve_local_files
from ..data.sample import sample_data_dir
from ..data.tasks import format_source, get_task, label_to_target
from ..data.tokenization import default_tokenizer
from ..errors import ConfigError
from ..training.evaluate import generate, rank_classify
from .rows import _hyperscale_model, _prepare_plain
from .runtime import _sync
from .settings import BenchSettings


def _eval_examples(task: str, n: int) -> tuple[list[str], list[str], list[str]]:
    """(n evaluation sources, training sources, training targets) of ``task`` from the shipped sample.

    Read with the loader's row-level functions, not ``load_task_splits``: no ``datasets`` needed (the GPU
    machine may lack it). Evaluation rows are the official dev/validation file's, repeated up to ``n``.
    """
    spec = get_task(task)
    files = resolve_local_files(spec, sample_data_dir())
    train_origin = "train"
    eval_origin = next(o for o in files if o != train_origin)
    pool = [format_source(spec, row) for row in read_local_split(spec, files[eval_origin])]
    train_rows = read_local_split(spec, files[train_origin])
    sources = [pool[i % len(pool)] for i in range(n)]
    targets = [label_to_target(spec, r["label"]) for r in train_rows]
    return sources, [format_source(spec, r) for r in train_rows], targets


def _fit_to_task(model, opt, autocast: Callable, tok, train_src: list[str], train_tgt: list[str],
                 s: BenchSettings) -> list[float]:
    """``s.eval_train_steps`` steps on the task's training split (learning rate x10): they teach the
    random-weight model the label strings, so that generation produces valid labels and the agreement
    rate means something. Returns the losses."""
    fit_losses: list[float] = []
    if s.eval_train_steps <= 0:
        return fit_losses
    lr_boost = 10.0
    for group in opt.opt.param_groups:
        group["lr"] *= lr_boost
    bs = s.eval_batch
    for i in range(s.eval_train_steps):
        idx = [(i * bs + j) % len(train_src) for j in range(bs)]
        enc = tok([train_src[j] for j in idx], max_length=s.eval_max_source_length, truncation=True,
                  padding=True, return_tensors="pt")
        lab = tok([train_tgt[j] for j in idx], padding=True, return_tensors="pt")
        lab_ids = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100).to(s.device)
        opt.zero_grad()
        with autocast():
            out = model(input_ids=enc["input_ids"].to(s.device), attention_mask=enc["attention_mask"].to(s.device),
                        labels=lab_ids, task_ids=s.eval_task)
        out.loss.backward()
        opt.step()
        fit_losses.append(float(out.loss.detach()))
    return fit_losses


def _timed(fn: Callable[[list[str]], list[str]], sources: list[str], s: BenchSettings) -> tuple[list[str], float]:
    """``fn`` over ``sources`` in batches of ``s.eval_batch`` after one warm-up batch: (predictions, seconds)."""
    fn(sources[: s.eval_batch])  # warm-up
    _sync(s.device)
    t0 = time.perf_counter()
    preds: list[str] = []
    for i in range(0, len(sources), s.eval_batch):
        preds.extend(fn(sources[i:i + s.eval_batch]))
    _sync(s.device)
    return preds, time.perf_counter() - t0


def run_eval(s: BenchSettings) -> dict:
    """Rank classification vs greedy generation on the same examples, same model (HyperFormer++)."""
    spec = get_task(s.eval_task)
    if spec.is_regression:
        raise ConfigError(f"--eval-task {s.eval_task}: rank classification needs a classification task")
    labels = list(spec.label_strings())
    tok = default_tokenizer()
    sources, train_src, train_tgt = _eval_examples(s.eval_task, s.eval_n)
    model = _hyperscale_model(s, "hyperformer++")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, autocast = _prepare_plain(model, trainable, s)
    fit_losses = _fit_to_task(model, opt, autocast, tok, train_src, train_tgt, s)
    model.eval()
    dev = torch.device(s.device)
    with torch.no_grad(), autocast():
        rank_preds, rank_s = _timed(lambda xs: rank_classify(model, tok, s.eval_task, xs, labels, dev,
                                                             s.eval_max_source_length), sources, s)
        gen_preds, gen_s = _timed(lambda xs: generate(model, tok, s.eval_task, xs, dev, s.eval_max_source_length,
                                                      spec.max_target_length + 1), sources, s)
    gen_preds = [p.strip() for p in gen_preds]
    valid = [i for i, p in enumerate(gen_preds) if p in labels]
    agree = sum(gen_preds[i] == rank_preds[i] for i in valid)
    n = len(sources)
    result = {
        "task": s.eval_task, "n": n, "batch": s.eval_batch, "labels": labels, "model": "hyperformer++",
        "max_new_tokens": spec.max_target_length + 1, "fit_steps": s.eval_train_steps,
        "fit_loss_first": fit_losses[0] if fit_losses else None,
        "fit_loss_last": fit_losses[-1] if fit_losses else None,
        "rank_ms_per_example": 1000.0 * rank_s / n, "generate_ms_per_example": 1000.0 * gen_s / n,
        "speedup": gen_s / rank_s if rank_s > 0 else None,
        "valid_generations": len(valid), "valid_rate": len(valid) / n,
        "agreement_on_valid": agree / len(valid) if valid else None,
        "timing_includes": "tokenization of the batch (both modes)",
    }
    return result
