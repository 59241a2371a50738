"""Reporting for experiment grids (few-shot transfer, low-resource sweeps) and for task embeddings.

The maths is plain torch / Python (no matplotlib needed)::

    summarize(rows, x_key, series_key="method", task_key="task", metric_key="metric") -> list[dict]
    markdown_table(summary, x_label, series_label="method", percent=None, digits=1) -> str
    cosine_similarity_matrix(embeddings) -> Tensor [n, n] (float64)
    project_2d(embeddings) -> Tensor [n, 2] (float64; PCA of the centred rows)
    check_new_files(paths, overwrite, flag="--overwrite")  # RunExistsError naming the file and the flag
    write_json(path, obj)                                   # atomic

The plots need matplotlib (``pip install -e '.[plots]'``); :func:`require_matplotlib` says so with a
:class:`~hyperscale.errors.ConfigError` when it is missing::

    plot_curves(summary, path, x_label, y_label, title=None)
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

from ..errors import ConfigError, RunExistsError

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


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_json(path: PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON at ``path``, written atomically (replaces an earlier file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _save_figure(plt: Any, fig: Any, path: PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (replaces an earlier file) and close it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(path)
        try:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ grids
def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order, before anything else (in text order)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def summarize(rows: Iterable[dict], x_key: str, series_key: str = "method", task_key: str = "task",
              metric_key: str = "metric") -> list[dict]:
    """Group result rows (one per run, e.g. ``{"method": "hyperformer++", "task": "cb", "k": 16, "seed": 0,
    "metric": 0.71}``) by (series, task, x) into ``{"series", "task", "x", "mean", "std", "n"}``.

    ``std`` is the sample standard deviation (n - 1), 0.0 for a single run; NaN metrics propagate. Sorted by
    task, series, then x (numbers numerically)."""
    groups: dict[tuple, list[float]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (series_key, task_key, x_key, metric_key) if k not in row]
        if missing:
            raise ValueError(f"result row {i} has no {', '.join(repr(k) for k in missing)}: {row}")
        key = (row[series_key], row[task_key], row[x_key])
        groups.setdefault(key, []).append(float(row[metric_key]))
    out = []
    for (series, task, x), values in groups.items():
        n = len(values)
        out.append({"series": series, "task": task, "x": x, "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if n > 1 else 0.0, "n": n})
    out.sort(key=lambda r: (_sort_key(r["task"]), _sort_key(r["series"]), _sort_key(r["x"])))
    return out


def _fmt_x(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _is_fraction_scale(summary: Sequence[dict]) -> bool:
    """Every finite mean within [-1, 1] (accuracy, F1, correlations): shown in percent."""
    finite = [r["mean"] for r in summary if math.isfinite(r["mean"])]
    return bool(finite) and all(-1.0 <= m <= 1.0 for m in finite)


def markdown_table(summary: Sequence[dict], x_label: str, series_label: str = "method",
                   percent: Optional[bool] = None, digits: int = 1) -> str:
    """One Markdown table of a :func:`summarize` result: a row per (task, series), a column per x value
    (``x_label = x``), cells ``mean ± std``; a caption line above it states the number of seeds. ``percent``
    (default: when every mean lies within [-1, 1]) shows metrics times 100 (``71.2 ± 3.4``). A cell without
    runs is ``–``; a cell with fewer runs than the most says its ``n``. Ends with a newline."""
    if not summary:
        raise ValueError("nothing to tabulate: the summary is empty")
    scale = 100.0 if (_is_fraction_scale(summary) if percent is None else percent) else 1.0
    xs = sorted({r["x"] for r in summary}, key=_sort_key)
    row_keys: list[tuple] = []
    cells: dict[tuple, dict] = {}
    for r in summary:
        key = (r["task"], r["series"])
        if key not in cells:
            row_keys.append(key)
            cells[key] = {}
        cells[key][r["x"]] = r
    ns = sorted({int(r["n"]) for r in summary})
    most = ns[-1]
    seeds = f"{most} seed{'s' if most != 1 else ''}" if len(ns) == 1 else f"{ns[0]}–{most} seeds"
    unit = " (in percent)" if scale != 1.0 else ""
    lines = [f"Mean ± sample std over {seeds}{unit}.", "",
             "| task | " + _cell(series_label) + " | " + " | ".join(_cell(f"{x_label} = {_fmt_x(x)}") for x in xs) + " |",
             "|---|---|" + "---:|" * len(xs)]
    for key in row_keys:
        row = []
        for x in xs:
            r = cells[key].get(x)
            if r is None:
                row.append("–")
                continue
            text = f"{scale * r['mean']:.{digits}f} ± {scale * r['std']:.{digits}f}"
            if int(r["n"]) != most:
                text += f" (n={int(r['n'])})"
            row.append(text)
        lines.append(f"| {_cell(key[0])} | {_cell(key[1])} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(summary: Sequence[dict], path: PathLike, x_label: str, y_label: str,
                title: Optional[str] = None) -> Path:
    """One PNG of a :func:`summarize` result: a subplot per task (a single axes for one task), a line per
    series with its std as error bars and a band; log-scale x when the (positive) x values span more than
    10x; non-numeric x values are evenly spaced categories. Replaces ``path`` atomically."""
    if not summary:
        raise ValueError("nothing to plot: the summary is empty")
    plt = require_matplotlib()
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    series = list(dict.fromkeys(r["series"] for r in summary))
    colors = {s: f"C{i % 10}" for i, s in enumerate(series)}
    all_x = sorted({r["x"] for r in summary}, key=_sort_key)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in all_x)
    position = {x: (float(x) if numeric else float(i)) for i, x in enumerate(all_x)}
    log_x = numeric and min(position.values()) > 0 and max(position.values()) > 10 * min(position.values())

    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, task in zip(flat, tasks):
        for s in series:
            pts = sorted((r for r in summary if r["task"] == task and r["series"] == s), key=lambda r: _sort_key(r["x"]))
            if not pts:
                continue
            xs = [position[r["x"]] for r in pts]
            means = [r["mean"] for r in pts]
            stds = [r["std"] for r in pts]
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, color=colors[s], label=str(s))
            ax.fill_between(xs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                            color=colors[s], alpha=0.15, linewidth=0)
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks([position[x] for x in all_x])
        ax.set_xticklabels([_fmt_x(x) for x in all_x])
        ax.minorticks_off()
        ax.set_title(str(task) if len(tasks) > 1 else (title or str(task)))
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, alpha=0.3)
    for ax in flat[len(tasks):]:
        ax.set_visible(False)
    flat[0].legend(fontsize="small")
    if title and len(tasks) > 1:
        fig.suptitle(title)
    fig.tight_layout()
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
           "plot_curves", "cosine_similarity_matrix", "project_2d", "explained_variance_2d", "plot_task_embeddings",
           "plot_cosine_similarity"]
