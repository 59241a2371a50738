"""The run directory (``output_dir``): one run at a time holds it (:class:`RunLock`), a new run refuses one that holds
a run already, run files are written once (a resume that differs writes its own version beside them), and a run
refuses to start where two checkpoints would not fit. A refused run leaves the directory as it found it
(:meth:`RunLock.abandon`)."""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError, HyperscaleError, RunExistsError
from . import checkpoint as ckpt
from . import distributed as hdist

LOCK = ".hyperscale.lock"


class RunLock:
    """An exclusive lock on ``output_dir`` held for as long as it stays open (at most the process's life): a
    second run started in the same directory fails at once, naming the one that holds it.

    :meth:`close` ends a run that did its work. :meth:`abandon` ends one refused during its set-up and leaves the
    directory as it found it: the lock file's previous text back (a finished run refused again keeps its record),
    or, where this run created them, the lock file and the then-empty directories gone."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.created = [d for d in (output_dir, *output_dir.parents) if not d.exists()]  # deepest first
        path = output_dir / LOCK
        self.previous: Optional[str] = path.read_text() if path.is_file() else None
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.file: Any = path.open("a+")
        except OSError as e:
            raise ConfigError(f"output_dir {output_dir} cannot be written ({e.strerror}); choose another output_dir "
                              "or fix its permissions") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunExistsError(f"output_dir {output_dir} is in use by another run ({holder}); wait for it to end, "
                                 "or choose another output_dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()

    def abandon(self) -> None:
        """Undo what taking the lock wrote (while still holding it), then release it."""
        if self.file.closed:
            return
        if self.previous is None:
            (self.output_dir / LOCK).unlink(missing_ok=True)
        else:
            self.file.seek(0)
            self.file.truncate()
            self.file.write(self.previous)
            self.file.flush()
        self.file.close()
        for d in self.created:  # deepest first; a directory that now holds anything stays
            try:
                d.rmdir()
            except OSError:
                break


def lock_run_dir(output_dir: Path) -> RunLock:
    """Take ``output_dir``'s run lock (:class:`RunLock`)."""
    return RunLock(output_dir)


def lock_output_dir(output_dir: Path, rank: int) -> Optional[RunLock]:
    """One run per output_dir: rank 0 takes its lock (returned; held for the whole run); every rank stops if it
    cannot."""
    lock, error = None, None
    if rank == 0:
        try:
            lock = lock_run_dir(output_dir)
        except HyperscaleError as e:
            error = e
    if hdist.any_rank(error is not None):
        raise error or RunExistsError(f"output_dir {output_dir} cannot be used (rank 0 says why)")
    return lock


def check_output_dir(output_dir: Path, resume: Optional[str]) -> None:
    """A run that is not a resume refuses an output_dir that holds a run (nothing is overwritten)."""
    has_run = (ckpt.find_latest(output_dir / "checkpoints") is not None
               or (output_dir / "train_log.jsonl").exists())
    if has_run and not resume:
        raise RunExistsError(
            f"output_dir {output_dir} already holds a run; continue it with --resume auto, or choose "
            "another output_dir (nothing is overwritten)")


def write_once(output_dir: Path, name: str, text: str, step: int) -> None:
    """Write a run file; a resumed run whose file differs keeps the original and writes its own
    version next to it (``config.resumed-step-00000400.yaml``), never overwriting what was written."""
    path = output_dir / name
    if path.exists() and path.read_text() != text:
        stem, dot, ext = name.partition(".")
        path = output_dir / f"{stem}.resumed-step-{step:08d}{dot}{ext}"
        hdist.log0(f"{name} differs from the run's original; this resume's version: {path.name}")
    if not path.exists():
        path.write_text(text)


def check_free_space(output_dir: Path, model: torch.nn.Module, rank: int) -> None:
    """Refuse to start when output_dir cannot hold two checkpoints (trainable weights, fp32 masters and two
    Adam moments: about 16 bytes per trainable parameter, on top of what is there)."""
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    need = 2 * (16 * trainable + (8 << 20))
    free = shutil.disk_usage(output_dir).free if rank == 0 else need
    if hdist.any_rank(free < need):
        raise ConfigError(f"output_dir {output_dir} has {free / 2**20:.0f} MiB free; two checkpoints of this "
                          f"run need about {need / 2**20:.0f} MiB: free space or choose another output_dir")
