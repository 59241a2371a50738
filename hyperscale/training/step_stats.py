"""Step statistics: per-task loss sums, example and token counts of every step stay on the training device; they
are all-reduced and copied to the host once per logging window (and before an eval, a save or a stop), not per
micro-batch. A flush writes each step's line of ``train_log.jsonl`` and the samples/tokens counters; a window's
end writes its scalars (TensorBoard) and, without a progress bar, a line in the log."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import distributed as hdist
from . import nonfinite
from .logging import RunLogger
from .state import TrainState


class StepStats:
    def __init__(self, tasks: list[str], policy: str, output_dir: Path, rank: int):
        self.tasks, self.policy, self.output_dir, self.rank = tasks, policy, output_dir, rank
        self.pending: list[torch.Tensor] = []  # per-step statistics not yet on the host (on the training device)
        self.pending_lr: list[float] = []
        self.pending_skipped: list[bool] = []  # whether each pending step was left out (train.nonfinite)
        self.window = self.empty_window()

    def empty_window(self) -> dict:
        return {"loss_sum": torch.zeros(len(self.tasks)), "count": torch.zeros(len(self.tasks)), "tokens": 0.0,
                "start": time.perf_counter(), "lr": 0.0, "steps": 0}

    def add(self, loss_sums: torch.Tensor, counts: torch.Tensor, lr: float, skipped: bool) -> None:
        """One step: ``loss_sums`` [tasks] on the device, ``counts`` [2, tasks] (examples, tokens) anywhere."""
        self.pending.append(torch.cat([loss_sums.unsqueeze(0), counts.to(loss_sums.device)]))
        self.pending_lr.append(lr)
        self.pending_skipped.append(skipped)

    def flush(self, state: TrainState, logger: RunLogger, last_tag: Optional[str],
              grad_norm: Callable[[], Optional[float]], bar: Any = None) -> Optional[torch.Tensor]:
        """Bring the pending steps' statistics to the host: one all-reduce and one copy for all of them.
        Writes each step's line of ``train_log.jsonl`` and the samples/tokens counters; returns the statistics
        ([steps, 3, tasks]: loss sums, examples, tokens per task) or None when nothing was pending.
        A non-finite loss stops the run unless its step was left out under ``train.nonfinite=skip``."""
        if not self.pending:
            return None
        stats = hdist.all_reduce(torch.stack(self.pending)).cpu()  # [steps, 3, tasks]
        first = state.step - len(self.pending) + 1
        losses = stats[:, 0].sum(1) / stats[:, 1].sum(1).clamp(min=1)
        skipped = torch.tensor(self.pending_skipped, dtype=torch.bool)
        left_out = skipped if self.policy == "skip" else torch.zeros_like(skipped)
        bad = ~torch.isfinite(losses) & ~left_out
        if bad.any():  # the same on every rank (all-reduced): all stop together
            k = int(bad.nonzero()[0])
            report = nonfinite.write_diagnostic(self.output_dir, self.rank, self.tasks, first + k, stats[k],
                                                self.pending_lr[k], grad_norm(), self.policy, state, last_tag)
            raise nonfinite.loss_error(float(losses[k]), first + k, self.pending_lr[k], last_tag, report)
        for k, (s, lr) in enumerate(zip(stats, self.pending_lr)):
            loss = float(s[0].sum() / s[1].sum().clamp(min=1))
            record = {"step": first + k, "loss": loss if math.isfinite(loss) else None, "lr": lr,
                      "tasks": {self.tasks[i]: int(c) for i, c in enumerate(s[1].tolist()) if c}}
            if skipped[k]:
                record["skipped"] = True
            logger.record(record)
            if not skipped[k]:  # a left-out step's loss is not part of the window's mean
                self.window["loss_sum"] += s[0]
                self.window["count"] += s[1]
                self.window["steps"] += 1
            self.window["tokens"] += float(s[2].sum())
            self.window["lr"] = lr
            state.samples_seen += int(s[1].sum())
            state.tokens_seen += int(s[2].sum())
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        self.pending, self.pending_lr, self.pending_skipped = [], [], []
        return stats

    def log_window(self, state: TrainState, logger: RunLogger, max_steps: int, grad_norm: Optional[float],
                   compiled_graphs: Optional[int], log_line: bool) -> None:
        """The window's scalars (loss, lr, throughput, grad norm, per-task loss and counts); ``log_line``: also a
        line in the log (batch jobs, without a progress bar). Starts the next window."""
        w, step = self.window, state.step
        seconds = max(time.perf_counter() - w["start"], 1e-9)
        count = w["count"].sum().clamp(min=1)
        scalars = {"train/loss": float(w["loss_sum"].sum() / count), "train/lr": w["lr"],
                   "train/samples_per_s": float(w["count"].sum()) / seconds,
                   "train/tokens_per_s": w["tokens"] / seconds,
                   "train/skipped_steps": float(state.skipped_steps)}
        if compiled_graphs is not None:  # bounded by the length buckets: a growing count means recompilation
            scalars["train/compiled_graphs"] = float(compiled_graphs)
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        for i, task in enumerate(self.tasks):
            scalars[f"train/task_count/{task}"] = float(w["count"][i])
            if w["count"][i] > 0:
                scalars[f"train/loss/{task}"] = float(w["loss_sum"][i] / w["count"][i])
        logger.scalars(step, scalars)
        logger.flush()
        if log_line:
            hdist.log0(f"step {step}/{max_steps}  loss {scalars['train/loss']:.4f}  lr {w['lr']:.3g}  "
                       f"{scalars['train/samples_per_s']:.1f} samples/s")
        self.window = self.empty_window()


@torch.no_grad()
def trainable_grad_norm(module: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """L2 norm of the (already all-reduced) gradients before clipping, as DeepSpeed's clipping sees them;
    a device tensor (read on the host only when logged)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.requires_grad and p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=device)
