"""Chance references for result tables and plots: what a model that ignores its input scores, and metric names.

A constant predictor answers every example the same way. Its best score per metric, on the very examples a run
was evaluated on, is the floor below which a score says nothing about a model: accuracy of the majority class,
F1 of always answering the positive class (81 on GLUE's mrpc test split: an "81 F1" can be a model that learned
nothing), MCC, Pearson and Spearman 0 (a constant has no correlation; :mod:`hyperscale.data.metrics` counts the
undefined value as 0).

    constant_predictor_scores(task, references) -> {metric: {"score": percent, "predicts": answer or None}}
    metric_name(metric) -> str          # "f1" -> "F1", "acc" -> "accuracy", "rouge_l" -> "ROUGE-L"
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from .metrics import compute_task_metrics
from .tasks import get_task

METRIC_NAMES = {"acc": "accuracy", "accuracy": "accuracy", "f1": "F1", "f1_binary": "F1", "f1_macro": "macro F1",
                "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman", "exact_match": "exact match",
                "rouge_l": "ROUGE-L"}


def metric_name(metric: str) -> str:
    """How a table or plot names a metric; an unknown name is returned as it is."""
    return METRIC_NAMES.get(metric, metric)


def _constants(task, references: list[str]) -> list[str]:
    """The answers a constant predictor may give: every label of a classification task; for regression one
    value (any constant scores the same, 0); for free text the most frequent reference."""
    if task.is_regression:
        return [references[0]]
    if getattr(task, "is_generation", False):
        return [Counter(references).most_common(1)[0][0]]
    return list(task.label_strings())


def constant_predictor_scores(task, references: Sequence[str]) -> dict:
    """Per metric of ``task``, the best score a constant answer reaches on ``references`` (target strings, as the
    loader makes them): ``{metric: {"score": percent, "predicts": the answer, "label": the answer's class name}}``;
    ``predicts`` and ``label`` are None where every constant scores the same (regression, MCC)."""
    task = get_task(task)
    references = list(references)
    if not references:
        raise ValueError(f"{task.name}: no references to score a constant predictor on")
    best: dict = {}
    every: dict = {}
    for constant in _constants(task, references):
        scores = compute_task_metrics(task, [constant] * len(references), references)
        for name, value in scores.items():
            every.setdefault(name, set()).add(float(value))
            if name not in best or value > best[name]["score"]:
                best[name] = {"score": float(value), "predicts": None if task.is_regression else constant,
                              "label": _label_name(task, constant)}
    for name, values in every.items():
        if len(values) == 1:  # every constant scores the same (MCC, correlations: 0): no answer to name
            best[name].update(predicts=None, label=None)
    return best


def _label_name(task, answer: str):
    """The class name of a classification answer (cb's ``"1"``: ``contradiction``), else None."""
    if task.is_regression or getattr(task, "is_generation", False):
        return None
    names = list(getattr(task, "label_names", None) or ())
    strings = list(task.label_strings())
    if answer in strings and len(names) == len(strings) and names[strings.index(answer)] != answer:
        return str(names[strings.index(answer)])
    return None


__all__ = ["METRIC_NAMES", "metric_name", "constant_predictor_scores"]
