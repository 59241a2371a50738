"""The process and the device the rows run in: memory measurement (sampled RSS on a CPU), out-of-memory
classification (the real ones and ``--fake-mem-limit-mb``'s simulated one), the one-process DeepSpeed
group, device synchronisation. Shared by the rows, the largest-batch search and the eval benchmark."""
from __future__ import annotations

import logging
import os
import threading
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..launch import find_free_port

CUDA_MEM_METRIC = "cuda max_memory_allocated"
CPU_MEM_METRIC = "cpu sampled peak RSS minus RSS before build"


def memory_metric(device: str) -> str:
    return CUDA_MEM_METRIC if device == "cuda" else CPU_MEM_METRIC


class _RssSampler:
    """Peak resident set size of this process, sampled by a thread (CPU memory approximation)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.start_rss = self.rss()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:  # not Linux: fall back to the (monotonic) high-water mark
            import resource  # Unix only: imported where it is the fallback

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def ensure_single_process_dist(device: str) -> None:
    """Start a world-size-1 process group the way the trainer's launcher would (rank variables set)."""
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ConfigError("the benchmark runs in one process: launch it with plain python, not torchrun/deepspeed")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(find_free_port())
    if device == "cuda":
        torch.cuda.set_device(0)
    import deepspeed  # heavy, and it picks its accelerator from DS_ACCELERATOR (set just above) on import

    for name in ("DeepSpeed", "deepspeed"):  # its per-engine INFO/WARNING chatter would bury the table
        logging.getLogger(name).setLevel(logging.ERROR)
    if not dist.is_initialized():
        deepspeed.init_distributed()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class SimulatedOutOfMemoryError(RuntimeError):
    """Raised by ``--fake-mem-limit-mb`` when a row's measured peak exceeds the limit: treated exactly like
    ``torch.cuda.OutOfMemoryError`` (the largest-batch search runs on a CPU)."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means "does not fit in memory" (CUDA OOM, the simulated one, a failed CPU allocation)."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t is not None)
    if isinstance(exc, (SimulatedOutOfMemoryError, MemoryError)) or (oom_types and isinstance(exc, oom_types)):
        return True
    msg = str(exc)  # older or wrapped forms of the same failures
    return isinstance(exc, RuntimeError) and ("CUDA out of memory" in msg or "can't allocate memory" in msg)
