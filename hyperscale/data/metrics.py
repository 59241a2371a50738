"""Task metrics on generated strings.

All scores are in **percent** (fraction * 100), as in the paper.

Post-processing of a generated string: surrounding whitespace is stripped;
everything else is strict.

* Classification: the stripped string must be exactly one of the task's target
  strings (``"0"``, ``"1"``, ...). Anything else is *invalid* and counts as
  wrong for every metric: for binary tasks it is replaced by the opposite of
  the reference label (so F1 and MCC see a wrong answer, as the reference's
  ``f1_score_with_invalid``); for multi-class tasks by ``-1``, a class that
  never matches.
* STS-B: the stripped string must parse as a finite float; an invalid one
  scores ``0.0`` (the bottom of the scale). Predictions are not clipped.
  Pearson/Spearman of a constant vector is undefined and reported as 0.

``references`` are target strings produced by the loader; an invalid
reference is a bug and raises ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .tasks import DEFAULT_STSB_GRID, get_task

INVALID_STSB_SCORE = 0.0


def _arrays(predictions, references):
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape:
        raise ValueError(f"{p.size} predictions but {r.size} references")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, r


def accuracy(predictions, references) -> float:
    """Percent of exact matches."""
    p, r = _arrays(predictions, references)
    return float(100.0 * np.mean(p == r))


def f1(predictions, references, positive=1) -> float:
    """Binary F1 of class ``positive`` in percent (predictions outside
    ``{0, 1}`` count as wrong: they are flipped against the reference)."""
    from sklearn.metrics import f1_score

    p, r = _arrays(predictions, references)
    p = p.astype(np.int64).copy()
    r = r.astype(np.int64)
    invalid = (p != 0) & (p != 1)
    p[invalid] = 1 - r[invalid]
    return float(100.0 * f1_score(r, p, pos_label=positive, zero_division=0.0))


def matthews_corr(predictions, references) -> float:
    """Matthews correlation coefficient in percent."""
    from sklearn.metrics import matthews_corrcoef

    p, r = _arrays(predictions, references)
    return float(100.0 * matthews_corrcoef(r, p))


def _corr(fn, predictions, references) -> float:
    p, r = _arrays(predictions, references)
    p, r = p.astype(np.float64), r.astype(np.float64)
    if p.size < 2 or np.all(p == p[0]) or np.all(r == r[0]):
        return 0.0
    value = float(fn(r, p)[0])
    return 0.0 if math.isnan(value) else 100.0 * value


def pearson(predictions, references) -> float:
    """Pearson correlation in percent (0 when undefined)."""
    from scipy.stats import pearsonr

    return _corr(pearsonr, predictions, references)


def spearman(predictions, references) -> float:
    """Spearman correlation in percent (0 when undefined)."""
    from scipy.stats import spearmanr

    return _corr(spearmanr, predictions, references)


def f1_macro(predictions, references) -> float:
    """Macro-averaged F1 over the classes of the references, in percent (an invalid prediction, ``-1``,
    is a wrong answer)."""
    from sklearn.metrics import f1_score

    p, r = _arrays(predictions, references)
    p, r = p.astype(np.int64), r.astype(np.int64)
    return float(100.0 * f1_score(r, p, labels=sorted(set(r.tolist())), average="macro", zero_division=0.0))


def _normalize_text(text) -> str:
    return " ".join(str(text).split())


def exact_match(predictions, references) -> float:
    """Percent of generated texts equal to the reference (surrounding and repeated whitespace ignored)."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    return float(100.0 * np.mean([_normalize_text(p) == _normalize_text(r)
                                  for p, r in zip(predictions, references)]))


def rouge_l(predictions, references) -> float:
    """Mean ROUGE-L F-measure in percent (the ``rouge-score`` package, with its stemmer off)."""
    from rouge_score import rouge_scorer

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(100.0 * np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]))


METRICS = {"acc": accuracy, "f1": f1, "mcc": matthews_corr, "pearson": pearson,
           "spearman": spearman,
           # the names of task specs' metric menu (hyperscale.data.specs.METRIC_MENU)
           "accuracy": accuracy, "f1_binary": f1, "f1_macro": f1_macro, "exact_match": exact_match,
           "rouge_l": rouge_l}


def parse_prediction(task, text: str, stsb_grid: float = DEFAULT_STSB_GRID):
    """Label of one generated string, or ``None`` if invalid (see module doc)."""
    task = get_task(task)
    if task.is_spec:
        return task.parse_output(text)
    text = str(text).strip()
    if task.is_regression:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    labels = task.label_strings(stsb_grid)
    return labels.index(text) if text in labels else None


def count_invalid(task, predictions: Sequence[str]) -> int:
    """How many predictions fail post-processing."""
    return sum(parse_prediction(task, p) is None for p in predictions)


def compute_task_metrics(task, predictions: Sequence[str], references: Sequence[str]) -> dict:
    """``{metric name: percent}`` for the task's metrics from generated strings."""
    task = get_task(task)
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{task.name}: {len(predictions)} predictions but "
                         f"{len(references)} references")
    if not predictions:
        raise ValueError(f"{task.name}: no predictions to score")
    refs = []
    for ref in references:
        value = parse_prediction(task, ref)
        if value is None:
            raise ValueError(f"{task.name}: invalid reference {ref!r}")
        refs.append(value)
    preds = []
    for pred, ref in zip(predictions, refs):
        value = parse_prediction(task, pred)
        if value is None:
            if task.is_spec and task.is_regression:
                value = task.value_range[0]  # the bottom of the spec's scale
            elif task.is_regression:
                value = INVALID_STSB_SCORE
            elif task.num_labels == 2:
                value = 1 - ref
            else:
                value = -1
        preds.append(value)
    return {name: METRICS[name](preds, refs) for name in task.metrics}


def average_metrics(per_task: Mapping[str, Mapping[str, float]]) -> dict:
    """``mean_all_metrics``: mean of every metric value of every task (the
    paper's model-selection number); ``mean_over_tasks``: mean of the per-task
    means."""
    values = [float(v) for scores in per_task.values() for v in scores.values()]
    task_means = [float(np.mean(list(scores.values()))) for scores in per_task.values() if scores]
    if not values:
        raise ValueError("no metric values to average")
    return {"mean_all_metrics": float(np.mean(values)),
            "mean_over_tasks": float(np.mean(task_means))}


__all__ = ["f1_macro", "exact_match", "rouge_l", "accuracy", "f1", "matthews_corr", "pearson", "spearman", "METRICS",
           "parse_prediction", "count_invalid", "compute_task_metrics", "average_metrics"]
