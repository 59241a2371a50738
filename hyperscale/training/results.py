"""What a run reports and leaves when it ends: ``RUN/eval/SPLIT-step-N.json`` per evaluation, ``RUN/results.json``
(an earlier one kept under its step), the results table on stdout, and the export of the last checkpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .export import export_checkpoint


def write_eval(output_dir: Path, result: dict) -> None:
    """One evaluation's result: ``RUN/eval/SPLIT-step-N.json``."""
    out = output_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result['split']}-step-{result['step']:08d}.json").write_text(json.dumps(result, indent=2) + "\n")


def eval_scalars(result: dict) -> dict:
    """An evaluation's TensorBoard scalars: the averages and every task's metrics."""
    split = result["split"]
    scalars = {f"eval/{split}/{k}": v for k, v in result["average"].items()}
    for task, metrics in result["tasks"].items():
        scalars.update({f"eval/{split}/{task}/{k}": v for k, v in metrics.items()})
    return scalars


def write_results(output_dir: Path, results: dict) -> None:
    """``RUN/results.json``; a resumed run finishing again keeps the earlier summary under its step."""
    out = output_dir / "results.json"
    if out.exists():
        try:
            earlier = max(int(r["step"]) for r in json.loads(out.read_text()).values())
        except (ValueError, KeyError, TypeError, AttributeError):
            earlier = "unknown"
        keep = output_dir / f"results.step-{earlier}.json"
        if not keep.exists():
            os.replace(out, keep)
    out.write_text(json.dumps(results, indent=2) + "\n")


def results_notice(backbone: str) -> Optional[str]:
    """The note above the table of a run on a randomly initialised (``preset:``) backbone."""
    if not backbone.startswith("preset:"):
        return None
    return (f"note: model.backbone={backbone} is a randomly initialised T5 (no pretrained weights), so these "
            "scores are at chance level: the run checks the pipeline. For real numbers train on a pretrained "
            "backbone, e.g. `hyperscale train configs/glue-t5-base.yaml` (downloads t5-base and GLUE).")


def format_results(results: dict, notice: Optional[str] = None) -> str:
    """The results table: per split, every task's metrics, each with the best constant answer's score on the same
    examples in brackets (where the evaluation recorded it), and the averages."""
    if not results:
        return "(no evaluation results)"
    lines = [notice] if notice else []
    for split, res in results.items():
        chance = res.get("chance") or {}
        lines.append(f"\n{split} (step {res['step']}):")
        lines.append(f"  {'task':<10} metrics" + ("  (in brackets: the best constant answer's score)" if chance else ""))
        for task, metrics in res["tasks"].items():
            ref = chance.get(task, {})
            lines.append(f"  {task:<10} " + "  ".join(
                f"{k} {v:6.2f}" + (f" ({ref[k]:.2f})" if k in ref else "") for k, v in metrics.items()))
        avg = res["average"]
        lines.append(f"  {'average':<10} " + "  ".join(f"{k} {v:6.2f}" for k, v in avg.items()))
    return "\n".join(lines)


def ensure_export(output_dir: Path, checkpoint: Path, step: int) -> Path:
    """``RUN/export`` holds the export of the last checkpoint (``checkpoint``, at ``step``); an export of an earlier
    step stays where it is and this one goes to ``RUN/export-step-N``."""
    for export_dir in (output_dir / "export", output_dir / f"export-step-{step:08d}"):
        config = export_dir / "hyperscale_config.json"
        if not config.exists():
            export_checkpoint(checkpoint, export_dir)
            return export_dir
        if _export_step(export_dir) == step:
            return export_dir
    return export_dir


def _export_step(export_dir: Path) -> Optional[int]:
    try:
        return int(json.loads((export_dir / "export.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
