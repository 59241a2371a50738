"""``hyperscale inspect EXPORT [--out DIR] [--overwrite]``: what an export holds.

Prints the parameter report (as ``hyperscale params`` does) of any directory ``HyperscaleModel.from_pretrained``
loads (``hyperscale export``, ``RUN/export``, ``save_pretrained``). For the methods that learn task embeddings
(hyperformer++, hyperformer) it writes into ``--out`` (default ``EXPORT/inspect``):

    task_embeddings.json   task names, the 2-D PCA coordinates (and their share of the variance), the cosine matrix
    task_embeddings.png    the 2-D projection, each point labelled with its task
    task_similarity.png    heatmap of the pairwise cosine similarities

Existing files there are not replaced unless ``--overwrite``. The plots need matplotlib
(``pip install -e '.[plots]'``); without it the JSON is still written and the command says how to install it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..experiments.report import (
    check_new_files,
    cosine_similarity_matrix,
    explained_variance_2d,
    plot_cosine_similarity,
    plot_task_embeddings,
    project_2d,
    require_matplotlib,
    write_json,
)
from ..modeling.io import read_config
from ..modeling.model import HyperscaleModel
from ..training.export import read_export_info
from .params import format_report

DESCRIPTION = ("Print an export's parameter report and plot its task embeddings (2-D projection, "
               "cosine similarity) with their JSON.")
JSON_NAME = "task_embeddings.json"
PROJECTION_PNG = "task_embeddings.png"
SIMILARITY_PNG = "task_similarity.png"
OUT_FILES = (JSON_NAME, PROJECTION_PNG, SIMILARITY_PNG)
EMBEDDING_METHODS = ("hyperformer++", "hyperformer")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("inspect", help=DESCRIPTION.replace("%", "%%"), description=DESCRIPTION.replace("%", "%%"))
    p.add_argument("export", help="an export directory (hyperscale export, RUN/export, or save_pretrained)")
    p.add_argument("--out", default=None, help="where the plots and JSON go (default: EXPORT/inspect)")
    p.add_argument("--overwrite", action="store_true", help="replace files an earlier inspect wrote in --out")
    p.add_argument("--backbone", default=None, help="load the export on this backbone (default: the recorded one)")
    p.set_defaults(func=run)
    return p


def task_embeddings(model: HyperscaleModel) -> Optional[torch.Tensor]:
    """The model's task embeddings [n_tasks, d] (a detached CPU copy), or None for a method without them."""
    emb = getattr(model.bank, "task_embeddings", None) if model.bank is not None else None
    return None if emb is None else emb.detach().float().cpu().clone()


def embeddings_summary(embeddings: torch.Tensor, names: list[str], method: str) -> dict[str, Any]:
    """What ``task_embeddings.json`` holds."""
    return {
        "method": method,
        "names": list(names),
        "embedding_dim": int(embeddings.shape[1]),
        "projection": {"method": "pca", "explained_variance_ratio": explained_variance_2d(embeddings).tolist()},
        "coords_2d": project_2d(embeddings).tolist(),
        "cosine_similarity": cosine_similarity_matrix(embeddings).tolist(),
    }


def run(args: argparse.Namespace) -> int:
    export = Path(args.export)
    out = Path(args.out) if args.out else export / "inspect"
    paths = {name: out / name for name in OUT_FILES}
    if read_config(export).method in EMBEDDING_METHODS:  # refused before the (maybe large) model is loaded
        check_new_files(paths.values(), args.overwrite)
    model = HyperscaleModel.from_pretrained(export, backbone=args.backbone)
    info = read_export_info(export) or {}
    backbone = (info.get("backbone") or {}).get("origin") or model.config.backbone_id or "its backbone"
    step = info.get("step")
    print(f"export: {export}" + (f" (step {step})" if step is not None else ""))
    print(format_report(model.parameter_report(), backbone))

    method = model.config.method
    emb = task_embeddings(model)
    if emb is None:
        origin = model.config.materialized_from
        why = (f" (materialized from {origin}: inspect the export it was materialized from)" if origin else "")
        print(f"\nnote: {method} has no task embeddings{why}; only hyperformer++ and hyperformer learn them. "
              "Nothing written.")
        return 0
    names = model.tasks
    if emb.shape[0] != len(names):
        raise ConfigError(f"{export}: {emb.shape[0]} task embeddings for {len(names)} tasks")

    plt_missing: Optional[ConfigError] = None
    try:
        require_matplotlib()
    except ConfigError as e:
        plt_missing = e
    try:
        write_json(paths[JSON_NAME], embeddings_summary(emb, names, method))
        print(f"\nwrote {paths[JSON_NAME]}")
        if plt_missing is not None:
            raise ConfigError(f"{plt_missing}; wrote {paths[JSON_NAME]} only (then rerun with --overwrite)")
        plot_task_embeddings(emb, names, paths[PROJECTION_PNG],
                             title=f"Task embeddings of {method} ({len(names)} tasks, PCA)")
        print(f"wrote {paths[PROJECTION_PNG]}")
        plot_cosine_similarity(emb, names, paths[SIMILARITY_PNG], title=f"Task embedding cosine similarity ({method})")
        print(f"wrote {paths[SIMILARITY_PNG]}")
    except OSError as e:
        raise ConfigError(f"cannot write into {out}: {e.strerror or e}; choose another directory with --out") from None
    return 0
