"""Run logging on rank 0: TensorBoard scalars/text and a JSON-lines step log."""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import torch


class RunLogger:
    """Writes ``RUN/tensorboard`` and ``RUN/train_log.jsonl``; a no-op on ranks other than 0.

    On resume from step ``k`` the TensorBoard writer purges events after ``k`` and the JSON log
    drops lines after ``k`` (the run will write them again), so curves never double up.
    """

    def __init__(self, output_dir: Path, rank: int, tensorboard: bool = True, resume_step: Optional[int] = None):
        self.enabled = rank == 0
        self.tb = None
        self.jsonl: Optional[Path] = None
        if not self.enabled:
            return
        self.jsonl = output_dir / "train_log.jsonl"
        if resume_step is not None and self.jsonl.exists():
            kept = [ln for ln in self.jsonl.read_text().splitlines() if ln.strip()
                    and json.loads(ln).get("step", 0) <= resume_step]
            self.jsonl.write_text("".join(ln + "\n" for ln in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            kwargs = {"purge_step": resume_step + 1} if resume_step is not None else {}
            self.tb = SummaryWriter(str(output_dir / "tensorboard"), **kwargs)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def record(self, entry: dict[str, Any]) -> None:
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_known_noise() -> None:
    """Silence third-party messages known to be harmless, narrowly (by message and source); everything else
    still shows. Call before DeepSpeed is imported."""
    # DeepSpeed announces "Setting accelerator to CPU" on every import when no GPU is visible; naming the
    # accelerator is the documented way to say that CPU is meant
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # DeepSpeed 0.19's ZeRO-2/3 call torch.distributed's deprecated reduce_scatter_tensor / all_gather_into_tensor:
    # a FutureWarning on every step (upstream: deepspeed/comm/torch.py)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` "
                            r"is deprecated", category=FutureWarning)
    # WarmupLR's constructor reads its own learning rate before the first step (upstream:
    # deepspeed/runtime/lr_schedules.py, WarmupLR.__init__ -> get_lr)
    logging.getLogger("DeepSpeed").addFilter(
        _DropMessages("Attempting to get learning rate from scheduler before it has started"))
