"""The non-finite policy (``train.nonfinite``): a step whose loss or gradients are inf/NaN stops the run with a
diagnostic (``abort``), or is left out, stopping after ``train.max_skipped_steps`` in a row (``skip``; fp16's loss
scaler always skips while it calibrates). DeepSpeed's optimizer wrappers leave such a step out themselves; under a
bare fp32 optimizer :func:`undo_if_nonfinite` does. The diagnostic is ``RUN/diverged-step-N.json``."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import TrainingDivergedError
from . import distributed as hdist
from .config import RunConfig
from .state import TrainState


@torch.no_grad()
def undo_if_nonfinite(engine: Any, grad_norm: torch.Tensor) -> Optional[Callable[[], None]]:
    """Bare fp32 optimizer, ``train.nonfinite=skip``: when the (all-reduced, so the same on every rank) gradients
    are not finite, zero them and return a function that, called after ``engine.step()``, puts the trainable
    weights, the optimizer state and the learning-rate schedule back as they were (DeepSpeed's own wrappers
    leave such a step out the same way). The copy is made only for such a step."""
    if bool(torch.isfinite(grad_norm)):
        return None
    e = engine
    params = [p for p in e.module.parameters() if p.requires_grad]
    values = [p.detach().clone() for p in params]
    optimizer = copy.deepcopy(e.optimizer.state_dict())
    schedule = copy.deepcopy(e.lr_scheduler.state_dict()) if e.lr_scheduler is not None else None
    for p in params:
        if p.grad is not None:
            p.grad.zero_()

    def undo() -> None:
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        e.optimizer.load_state_dict(optimizer)
        if schedule is not None:
            e.lr_scheduler.load_state_dict(schedule)
    return undo


def must_stop(cfg: RunConfig, state: TrainState, skipped: bool) -> bool:
    """After each step: count a step left out for non-finite losses or gradients; True when ``train.nonfinite``
    says the run stops here (:func:`stop_error` says why). Reads only host values (DeepSpeed's overflow flag is
    already agreed across ranks)."""
    t = cfg.train
    if not skipped:
        state.skipped_in_a_row = 0
        return False
    state.skipped_steps += 1
    state.skipped_in_a_row += 1
    if tolerated(cfg) and state.skipped_in_a_row < t.max_skipped_steps:
        hdist.log0(f"step {state.step}: non-finite loss or gradients; the step was left out ({state.skipped_in_a_row} "
                   f"in a row, the run stops at {t.max_skipped_steps})")
        return False
    return True


def tolerated(cfg: RunConfig) -> bool:
    """Whether a non-finite step is left out rather than stopping the run (fp16: the loss scaler calibrates by
    skipping)."""
    return cfg.train.nonfinite == "skip" or cfg.train.precision == "fp16"


def stop_error(cfg: RunConfig, state: TrainState, lr: float, last_tag: Optional[str],
               report: Path) -> TrainingDivergedError:
    t, step = cfg.train, state.step
    if tolerated(cfg):
        return TrainingDivergedError(
            f"{state.skipped_in_a_row} optimizer steps in a row (up to step {step}) had non-finite losses or gradients "
            f"and were left out (train.max_skipped_steps={t.max_skipped_steps}); lower train.lr (now {t.lr:g}) or "
            f"check the data. The last checkpoint is {last_tag or 'none'}; details in {report}")
    return TrainingDivergedError(
        f"the gradients became non-finite (inf/NaN) at step {step} (lr {lr:.3g}); lower train.lr "
        f"or check the data, or set train.nonfinite=skip to leave such steps out. Nothing from step {step} on was "
        f"saved; the last checkpoint is {last_tag or 'none'}; details in {report}")


def loss_error(loss: float, step: int, lr: float, last_tag: Optional[str], report: Path) -> TrainingDivergedError:
    """A non-finite training loss of a step the policy does not leave out."""
    return TrainingDivergedError(
        f"the training loss became {loss} at step {step} (lr {lr:.3g}); lower "
        f"train.lr or check the data, or set train.nonfinite=skip to leave such steps out. Nothing from step "
        f"{step} on was saved; the last checkpoint is {last_tag or 'none'}; details in {report}")


def write_diagnostic(output_dir: Path, rank: int, tasks: list[str], step: int, stats: torch.Tensor, lr: float,
                     grad_norm: Optional[float], policy: str, state: TrainState, last_tag: Optional[str]) -> Path:
    """``RUN/diverged-step-N.json``: what a user needs to see why a run stopped (rank 0 writes it); ``stats`` is the
    step's [3, tasks] statistics (loss sums, examples, tokens)."""
    per_task = {t: {"examples": int(stats[1][i]), "loss": float(stats[0][i] / stats[1][i])}
                for i, t in enumerate(tasks) if stats[1][i] > 0}
    report = {"step": step, "lr": lr, "tasks": per_task, "grad_norm": grad_norm,
              "nonfinite_policy": policy, "skipped_steps": state.skipped_steps,
              "skipped_in_a_row": state.skipped_in_a_row,
              "last_checkpoint": last_tag}
    path = output_dir / f"diverged-step-{step:08d}.json"
    if rank == 0:
        path.write_text(json.dumps(report, indent=2) + "\n")
    return path
