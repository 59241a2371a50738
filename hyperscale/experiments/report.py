"""Reporting for experiment grids (few-shot transfer, low-resource sweeps) and for task embeddings.

The maths is plain torch / Python (no matplotlib needed)::

    summarize(rows, x_key, series_key="method", task_key="task", metric_key="metric", score_key="score")
    markdown_table(summary, x_label, chance=None, series_label="method", digits=1, split="test") -> str
    console_table(summary, x_label, chance=None, digits=1, split="test") -> str   # aligned text, one row per line
    at_chance(score, chance, digits=1) -> bool    # a constant predictor reaches the score (as shown)
    cosine_similarity_matrix(embeddings) -> Tensor [n, n] (float64)
    project_2d(embeddings) -> Tensor [n, 2] (float64; PCA of the centred rows)
    check_new_files(paths, overwrite, flag="--overwrite")  # RunExistsError naming the file and the flag
    write_json(path, obj)                                   # atomic

The plots need matplotlib (``pip install -e '.[plots]'``); :func:`require_matplotlib` says so with a
:class:`~hyperscale.errors.ConfigError` when it is missing::

    plot_curves(summary, path, x_label, title=None, chance=None, split="test")
    plot_task_embeddings(embeddings, names, path, title=None)
    plot_cosine_similarity(embeddings, names, path, title=None)

Every writer replaces ``path`` atomically (a temporary file in the same directory, then ``os.replace``): a
reader never sees half a file, and an earlier plot or JSON at ``path`` is replaced (they are derived data,
remade from the results). Whether an existing file may be replaced is the caller's decision: commands check
first with :func:`check_new_files` and refuse unless ``--overwrite``.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch

from ..atomic import replace_with, write_text_atomic
from ..errors import ConfigError, RunExistsError
from ..data.chance import metric_name

PathLike = Union[str, os.PathLike]
PLOTS_HINT = "plots need matplotlib: pip install -e '.[plots]' (or pip install matplotlib)"


# ------------------------------------------------------------------------------------------------ files
def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); ConfigError when not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(PLOTS_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_new_files(paths: Iterable[PathLike], overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse (RunExistsError, one line naming the file and ``flag``) when one of ``paths`` exists and not
    ``overwrite``; call it before writing anything."""
    if overwrite:
        return
    for p in paths:
        if os.path.lexists(p):
            raise RunExistsError(f"{p} already exists; pass {flag} to replace it")


def write_json(path: PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON at ``path``, written atomically (replaces an earlier file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _save_figure(plt: Any, fig: Any, path: PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (replaces an earlier file) and close it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ grids
# Every score is in percent (hyperscale.data.metrics); the range a metric can take bounds a plot's y axis.
METRIC_RANGE = {"acc": (0.0, 100.0), "accuracy": (0.0, 100.0), "f1": (0.0, 100.0), "f1_binary": (0.0, 100.0),
                "f1_macro": (0.0, 100.0), "exact_match": (0.0, 100.0), "rouge_l": (0.0, 100.0),
                "mcc": (-100.0, 100.0), "pearson": (-100.0, 100.0), "spearman": (-100.0, 100.0)}
CORRELATIONS = ("mcc", "pearson", "spearman")
MEAN_SCORE = "mean"  # the metric of a sweep's ``average`` row: the mean over tasks of each task's mean score
MIN_Y_SPAN = 20.0  # percentage points: a panel never zooms in on rounding noise (cola's MCC 0.0 is not ±0.04)
CHANCE_LABEL = "constant predictor (chance)"
AT_CHANCE_MARK = "†"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def metric_label(metric: str) -> str:
    """The name tables and plots give a metric: ``f1`` -> ``F1``, ``acc`` -> ``accuracy``."""
    return "mean score" if metric == MEAN_SCORE else metric_name(metric)


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order, before anything else (in text order)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def summarize(rows: Iterable[dict], x_key: str, series_key: str = "method", task_key: str = "task",
              metric_key: str = "metric", score_key: str = "score") -> list[dict]:
    """Group result rows (one per run, task and metric, e.g. ``{"method": "hyperformer++", "task": "mrpc",
    "metric": "f1", "k": 16, "seed": 0, "score": 81.2}``) by (series, task, metric, x) into
    ``{"series", "task", "metric", "x", "mean", "std", "n"}``.

    ``std`` is the sample standard deviation (n - 1); ``None`` for a single run (no spread is known). NaN scores
    propagate. Ordered by task, metric and series as they first appear in ``rows``, then by x (numbers
    numerically)."""
    groups: dict[tuple, list[float]] = {}
    first: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (series_key, task_key, metric_key, x_key, score_key) if k not in row]
        if missing:
            raise ValueError(f"result row {i} has no {', '.join(repr(k) for k in missing)}: {row}")
        for what in (("task", row[task_key]), ("metric", row[task_key], row[metric_key]), ("series", row[series_key])):
            first.setdefault(what, len(first))
        groups.setdefault((row[series_key], row[task_key], row[metric_key], row[x_key]), []).append(
            float(row[score_key]))
    out = []
    for (series, task, metric, x), values in groups.items():
        n = len(values)
        out.append({"series": series, "task": task, "metric": metric, "x": x, "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if n > 1 else None, "n": n})
    out.sort(key=lambda r: (first[("task", r["task"])], first[("metric", r["task"], r["metric"])],
                            first[("series", r["series"])], _sort_key(r["x"])))
    return out


def _fmt_x(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def at_chance(score: float, chance: Optional[float], digits: int = 1) -> bool:
    """Whether a constant predictor reaches ``score`` (as shown, to ``digits`` decimals)."""
    if chance is None or not math.isfinite(score):
        return False
    return round(score, digits) <= round(chance, digits)


def _chance_of(chance: Optional[dict], task: Any, metric: str) -> Optional[dict]:
    """``{"score", "predicts"}`` of a task's metric in a chance record (see :func:`markdown_table`)."""
    ref = (chance or {}).get(task) or {}
    return (ref.get("scores") or {}).get(metric)


def markdown_table(summary: Sequence[dict], x_label: str, chance: Optional[dict] = None,
                   series_label: str = "method", digits: int = 1, split: str = "test") -> str:
    """Markdown of a :func:`summarize` result: a table per task, a row per (series, x) with its number of seeds,
    a column per metric (named: ``F1``, ``accuracy``, ...). A cell is ``mean ± std`` over 2+ seeds, the score
    alone for 1 seed, ``–`` without runs. Scores are percent, as the metrics are.

    ``chance``: ``{task: {"split", "examples", "scores": {metric: {"score", "predicts"}}}}`` (the best constant
    answer on the evaluated examples, :func:`hyperscale.data.metrics.constant_predictor_scores`); it adds a
    ``constant predictor (chance)`` row to the task's table and marks with † every score it reaches. Notes above
    the tables say what the numbers are. Ends with a newline."""
    if not summary:
        raise ValueError("nothing to tabulate: the summary is empty")
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    series_order = {s: i for i, s in enumerate(dict.fromkeys(r["series"] for r in summary))}
    metrics_all = {r["metric"] for r in summary}
    notes = [f"Scores in percent on each task's {split} split: the mean ± sample std over the seeds of a row when it "
             "has 2 or more (column seeds); a row with 1 seed shows its one score, with no spread."]
    if chance:
        notes.append(f"*{CHANCE_LABEL}*: the best score an answer that ignores the input reaches on the same "
                     f"examples (in parentheses, that answer). {AT_CHANCE_MARK} marks a score a constant predictor "
                     "reaches (at or below chance as shown): such a score says nothing about the model.")
    if metrics_all & set(CORRELATIONS):
        notes.append("MCC, Pearson and Spearman of a constant answer are 0 (an undefined correlation counts as 0): "
                     "a 0.0 there most likely means the model gave every example the same answer.")
    if MEAN_SCORE in metrics_all:
        notes.append("*average*: per run, the mean over tasks of each task's mean score (the paper's average); its "
                     "chance is the same mean of the tasks' chance scores.")
    lines = [" ".join(notes), ""]
    for task in tasks:
        rows = [r for r in summary if r["task"] == task]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        ref = (chance or {}).get(task) or {}
        heading = f"## {task}: " + ", ".join(metric_label(m) for m in metrics)
        if ref.get("examples"):
            heading += f" ({ref.get('split', split)} split, {ref['examples']} examples)"
        lines += [heading, "",
                  f"| {_cell(series_label)} | {_cell(x_label)} | seeds | "
                  + " | ".join(_cell(metric_label(m)) for m in metrics) + " |",
                  "|---|---:|---:|" + "---:|" * len(metrics)]
        if ref:
            cells = []
            for m in metrics:
                c = _chance_of(chance, task, m)
                if c is None:
                    cells.append("–")
                    continue
                predicts = ""
                if c.get("predicts") is not None:
                    predicts = f' ("{c["predicts"]}"' + (f" = {c['label']})" if c.get("label") else ")")
                cells.append(f"{c['score']:.{digits}f}{_cell(predicts)}")
            lines.append(f"| *{CHANCE_LABEL}* | – | – | " + " | ".join(cells) + " |")
        by_key = {(r["series"], r["x"], r["metric"]): r for r in rows}
        keys = sorted(dict.fromkeys((r["series"], r["x"]) for r in rows),
                      key=lambda k: (series_order[k[0]], _sort_key(k[1])))
        for s, x in keys:
            cells, n = [], 0
            for m in metrics:
                r = by_key.get((s, x, m))
                if r is None:
                    cells.append("–")
                    continue
                n = max(n, int(r["n"]))
                text = f"{r['mean']:.{digits}f}"
                if int(r["n"]) > 1 and r["std"] is not None:
                    text += f" ± {r['std']:.{digits}f}"
                c = _chance_of(chance, task, m)
                if c is not None and at_chance(r["mean"], c["score"], digits):
                    text += f" {AT_CHANCE_MARK}"
                cells.append(text)
            lines.append(f"| {_cell(s)} | {_cell(_fmt_x(x))} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def console_table(summary: Sequence[dict], x_label: str, chance: Optional[dict] = None, digits: int = 1,
                  split: str = "test") -> str:
    """A compact, aligned text table of a :func:`summarize` result for the console: a row per (task, metric,
    series) with the constant predictor's score, a column per x; cells as in :func:`markdown_table` (± over 2+
    seeds, ``(n=K)`` where a cell has fewer seeds than the most, † where a constant predictor reaches it)."""
    if not summary:
        raise ValueError("nothing to tabulate: the summary is empty")
    xs = sorted({r["x"] for r in summary}, key=_sort_key)
    most = max(int(r["n"]) for r in summary)
    by_key = {(r["task"], r["metric"], r["series"], r["x"]): r for r in summary}
    head = ["task", "metric", "chance", "method", *[f"{x_label}={_fmt_x(x)}" for x in xs]]
    table = [head]
    for task, metric, series in dict.fromkeys((r["task"], r["metric"], r["series"]) for r in summary):
        c = _chance_of(chance, task, metric)
        row = [str(task), metric_label(metric), f"{c['score']:.{digits}f}" if c is not None else "–", str(series)]
        for x in xs:
            r = by_key.get((task, metric, series, x))
            if r is None:
                row.append("–")
                continue
            text = f"{r['mean']:.{digits}f}"
            if int(r["n"]) > 1 and r["std"] is not None:
                text += f" ± {r['std']:.{digits}f}"
            if int(r["n"]) != most:
                text += f" (n={int(r['n'])})"
            if c is not None and at_chance(r["mean"], c["score"], digits):
                text += f" {AT_CHANCE_MARK}"
            row.append(text)
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    seeds = f"mean ± std over {most} seeds" if most > 1 else "1 seed"
    lines = [f"{split} scores in percent ({seeds}); chance: a constant predictor's score"
             + (f", {AT_CHANCE_MARK}: a constant predictor reaches it" if chance else "")]
    for row in table:
        cells = [c.ljust(w) if i in (0, 1, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _y_limits(values: Sequence[float], metric: str) -> tuple[float, float]:
    """A y range that holds ``values`` with a margin, at least :data:`MIN_Y_SPAN` wide, inside what the metric
    can take (so a flat 0.0 is a line in the middle of -10..10, not noise blown up to fill the panel)."""
    lo_bound, hi_bound = METRIC_RANGE.get(metric, (-100.0, 100.0))
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return lo_bound, hi_bound
    lo, hi = min(finite), max(finite)
    span = max(hi - lo, MIN_Y_SPAN)
    mid = (lo + hi) / 2
    lo, hi = mid - 0.55 * span, mid + 0.55 * span
    if lo < lo_bound:
        lo, hi = lo_bound, min(hi_bound, hi + (lo_bound - lo))
    if hi > hi_bound:
        lo, hi = max(lo_bound, lo - (hi - hi_bound)), hi_bound
    return lo, hi


def plot_curves(summary: Sequence[dict], path: PathLike, x_label: str, title: Optional[str] = None,
                chance: Optional[dict] = None, split: str = "test") -> Path:
    """One PNG of a :func:`summarize` result: a panel per (task, metric), titled with both, its y axis in the
    metric's percent (at least :data:`MIN_Y_SPAN` points tall, never outside the metric's range); a line per
    series, each with its own colour, marker and line style and a small x offset, so that series with equal
    values stay visible side by side; error bars and a band of ± std where a point has 2+ seeds; the
    constant predictor's score (``chance``, see :func:`markdown_table`) as a dashed grey line. One legend, below
    the panels. Log-scale x when the (positive) x values span more than 10x; non-numeric x values are evenly
    spaced categories. Replaces ``path`` atomically."""
    if not summary:
        raise ValueError("nothing to plot: the summary is empty")
    plt = require_matplotlib()
    panels = list(dict.fromkeys((r["task"], r["metric"]) for r in summary))
    series = list(dict.fromkeys(r["series"] for r in summary))
    all_x = sorted({r["x"] for r in summary}, key=_sort_key)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in all_x)
    position = {x: (float(x) if numeric else float(i)) for i, x in enumerate(all_x)}
    log_x = numeric and min(position.values()) > 0 and max(position.values()) > 10 * min(position.values())

    # x offsets: series i of S sits (i - (S-1)/2) steps from the true x; a step is 2.5 % of the axis' extent
    # (in decades on a log axis)
    axis = {x: (math.log10(p) if log_x else p) for x, p in position.items()}
    extent = max(axis.values()) - min(axis.values())
    step = 0.025 * extent if extent > 0 else (0.01 if log_x else 0.02 * max(1.0, abs(next(iter(axis.values())))))
    center = (len(series) - 1) / 2

    def shifted(x: Any, i: int) -> float:
        a = axis[x] + step * (i - center)
        return 10 ** a if log_x else a

    ns = sorted({int(r["n"]) for r in summary})
    if ns[-1] < 2:
        seeds = "1 seed, no spread"
    else:
        seeds = f"mean ± std over {ns[0]}–{ns[-1]} seeds" if len(ns) > 1 else f"mean ± std over {ns[0]} seeds"

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    size = (7.0, 4.6) if len(panels) == 1 else (4.6 * ncols, 3.7 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    flat = [ax for row in axes for ax in row]
    handles: dict[str, Any] = {}
    for ax, (task, metric) in zip(flat, panels):
        values = []
        for i, s in enumerate(series):
            pts = [r for r in summary if r["task"] == task and r["metric"] == metric and r["series"] == s]
            if not pts:
                continue
            color = f"C{i % 10}"
            xs = [shifted(r["x"], i) for r in pts]
            means = [r["mean"] for r in pts]
            stds = [r["std"] if r["std"] is not None else 0.0 for r in pts]
            values += [m - d for m, d in zip(means, stds)] + [m + d for m, d in zip(means, stds)]
            (line,) = ax.plot(xs, means, color=color, marker=MARKERS[i % len(MARKERS)],
                              linestyle=LINESTYLES[i % len(LINESTYLES)], markersize=6, linewidth=1.6,
                              markerfacecolor="none" if i % 2 else color, markeredgewidth=1.4, zorder=3 + i,
                              label=str(s))
            handles.setdefault(str(s), line)
            if any(int(r["n"]) > 1 for r in pts):
                ax.errorbar(xs, means, yerr=stds, fmt="none", ecolor=color, capsize=3, linewidth=1, zorder=3 + i)
                ax.fill_between(xs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                                color=color, alpha=0.12, linewidth=0, zorder=2)
        c = _chance_of(chance, task, metric)
        ref = (chance or {}).get(task) or {}
        if c is not None:
            values.append(c["score"])
            handles.setdefault(CHANCE_LABEL, ax.axhline(c["score"], color="0.3", linestyle=(0, (4, 3)),
                                                        linewidth=1.1, zorder=20, label=CHANCE_LABEL))
        ax.set_ylim(*_y_limits(values, metric))
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks([position[x] for x in all_x])
        ax.set_xticklabels([_fmt_x(x) for x in all_x])
        ax.minorticks_off()
        where = f"{ref.get('split', split)}, {ref['examples']} examples" if ref.get("examples") else split
        ax.set_title(f"{task}: {metric_label(metric)} ({where})", fontsize="medium")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{metric_label(metric)} (%)")
        ax.grid(True, alpha=0.3)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: {split} score per task and metric ({seeds})" if title
                 else f"{split} score per task and metric ({seeds})")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(2 if ncols == 1 else 3, len(handles)), frameon=False)
    return _save_figure(plt, fig, path)


# ------------------------------------------------------------------------------------------------ embeddings
def _as_matrix(embeddings: Any) -> torch.Tensor:
    e = torch.as_tensor(embeddings).detach().to("cpu", torch.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty [n, d] matrix, got shape {tuple(e.shape)}")
    return e


def cosine_similarity_matrix(embeddings: Any) -> torch.Tensor:
    """Pairwise cosine similarities [n, n] (float64): symmetric, within [-1, 1], ones on the diagonal (zeros
    on the row and column of an all-zero embedding)."""
    e = _as_matrix(embeddings)
    norms = e.norm(dim=1)
    unit = e / norms.clamp_min(1e-12)[:, None]
    sim = unit @ unit.T
    sim = ((sim + sim.T) / 2).clamp(-1.0, 1.0)
    sim.diagonal().copy_((norms > 0).to(sim.dtype))
    return sim


def _pca_2d(embeddings: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(coordinates [n, 2], fraction of the variance of each of the two components)."""
    e = _as_matrix(embeddings)
    x = e - e.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    coords = torch.zeros(e.shape[0], 2, dtype=torch.float64)
    ratio = torch.zeros(2, dtype=torch.float64)
    total = float((s ** 2).sum())
    if total <= 0:  # one embedding, or all alike: every point at the origin
        return coords, ratio
    for j in range(min(2, s.numel())):
        if s[j] <= 1e-9 * s[0]:  # a degenerate direction (two points span one): no spread along it
            break
        c = x @ vh[j]
        if c[c.abs().argmax()] < 0:  # a fixed sign: the same embeddings give the same picture
            c = -c
        coords[:, j] = c
        ratio[j] = float(s[j] ** 2) / total
    return coords, ratio


def project_2d(embeddings: Any) -> torch.Tensor:
    """2-D PCA projection [n, 2] (float64) of the centred rows (SVD); the sign of each component is fixed
    (its largest coordinate is positive). One row, or identical rows, lie at the origin; two rows lie on the
    first axis."""
    return _pca_2d(embeddings)[0]


def explained_variance_2d(embeddings: Any) -> torch.Tensor:
    """The fraction of the variance that each of the two :func:`project_2d` components carries."""
    return _pca_2d(embeddings)[1]


def _check_names(embeddings: Any, names: Sequence[str]) -> None:
    n = _as_matrix(embeddings).shape[0]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} embeddings")


def plot_task_embeddings(embeddings: Any, names: Sequence[str], path: PathLike, title: Optional[str] = None) -> Path:
    """Scatter of the 2-D PCA projection (:func:`project_2d`), each point labelled with its task name.
    Replaces ``path`` atomically."""
    _check_names(embeddings, names)
    plt = require_matplotlib()
    coords, ratio = _pca_2d(embeddings)
    xs, ys = coords[:, 0].tolist(), coords[:, 1].tolist()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xs, ys, s=40, c=[f"C{i % 10}" for i in range(len(xs))], zorder=2)
    for name, x, y in zip(names, xs, ys):
        ax.annotate(str(name), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=9)
    span = max([abs(v) for v in xs + ys] + [0.0])
    pad = 0.15 * span if span > 0 else 1.0
    ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.axhline(0, color="0.85", linewidth=0.8, zorder=1)
    ax.axvline(0, color="0.85", linewidth=0.8, zorder=1)
    ax.set_xlabel(f"PC1 ({100 * float(ratio[0]):.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * float(ratio[1]):.1f}% of variance)")
    ax.set_title(title or f"Task embeddings ({len(xs)} tasks, PCA)")
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def plot_cosine_similarity(embeddings: Any, names: Sequence[str], path: PathLike, title: Optional[str] = None) -> Path:
    """Heatmap of :func:`cosine_similarity_matrix` (scale -1..1), every cell annotated with its value.
    Replaces ``path`` atomically."""
    _check_names(embeddings, names)
    plt = require_matplotlib()
    sim = cosine_similarity_matrix(embeddings)
    n = sim.shape[0]
    size = max(4.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(sim.numpy(), cmap="coolwarm", vmin=-1.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(s) for s in names], rotation=45, ha="right")
    ax.set_yticklabels([str(s) for s in names])
    fontsize = max(4.0, min(9.0, 120.0 / n))
    for i in range(n):
        for j in range(n):
            v = float(sim[i, j])
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if abs(v) > 0.6 else "black")
    ax.set_title(title or "Task embedding cosine similarity")
    fig.tight_layout()
    return _save_figure(plt, fig, path)


__all__ = ["PLOTS_HINT", "require_matplotlib", "check_new_files", "write_json", "summarize", "markdown_table",
           "metric_label", "at_chance", "console_table",
           "plot_curves", "cosine_similarity_matrix", "project_2d", "explained_variance_2d", "plot_task_embeddings",
           "plot_cosine_similarity"]
