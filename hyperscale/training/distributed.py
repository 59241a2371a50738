"""Rank helpers and every tensor collective of hyperscale.

No other module of the package calls a ``torch.distributed`` collective (a test scans for it). The
rule that makes multi-GPU runs work: a collective runs on the *communication device* of the process
group, which is ``cuda:LOCAL_RANK`` under NCCL (DeepSpeed's CUDA accelerator picks ``nccl``, and an
NCCL group has no CPU backend: ``RuntimeError: No backend type associated with device type cpu``)
and the CPU under gloo. Callers hand tensors from wherever they live; :func:`all_reduce` moves them
to that device, reduces, and writes the result back into the caller's tensor.

:func:`init` sets the CUDA device *before* the process group exists (NCCL binds a rank to the
current device when the group is created; set it later and rank 1 may talk through GPU 0).

CPU tests over gloo cannot see a CPU tensor handed to an NCCL group; the test suite simulates one
(``tests/engine/nccl_simulation.py``) by wrapping :func:`_to_comm` and torch.distributed's collectives, so
this module holds no simulation code of its own.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError, current_rank, leave_process_group
from .logging import hidden_output
from ..launch import setup_distributed_env

logger = logging.getLogger("hyperscale.training")


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device  # where this rank computes: cuda:LOCAL_RANK or cpu


def training_device(want: str, local_rank: int) -> torch.device:
    """``train.device`` (auto | cuda | cpu) -> the device of this rank."""
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(timeout_s: int, device: str = "auto") -> RankInfo:
    """Derive the rank environment (torchrun, deepspeed, srun or a plain process), set the CUDA device,
    then start the process group through DeepSpeed. Idempotent."""
    import deepspeed  # heavy: imported when a process group is really wanted

    env = setup_distributed_env()
    where = training_device(device, env.local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)  # before the group exists: NCCL binds the rank to the current device
    with hidden_output():  # DeepSpeed's "deepspeed_shm_comm_op built successfully", a line per rank, unless verbose
        deepspeed.init_distributed(timeout=timedelta(seconds=timeout_s))
    return RankInfo(env.rank, env.local_rank, env.world_size, where)


# ------------------------------------------------------------------------------------------ ranks
def leave() -> None:
    """Destroy this process's group and DeepSpeed's clone of it (:func:`hyperscale.errors.leave_process_group`)."""
    leave_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (:func:`hyperscale.errors.current_rank`: the group's, else the launcher's, else 0)."""
    return current_rank()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def log0(msg: str) -> None:
    """``logger.info`` of the training package (``hyperscale.training``): on the console of an entry point, rank 0's
    line (every rank's at DEBUG), above the progress bar (:func:`hyperscale.errors.console_logging`)."""
    logger.info(msg)


# ------------------------------------------------------------------------------------- collectives
def comm_device() -> torch.device:
    """The device the default process group communicates on: ``cuda:<current>`` under NCCL, else CPU."""
    if is_initialized() and "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_comm(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the communication device: ``t`` itself when it lives there, else a copy."""
    dev = comm_device()
    return t if t.device == dev else t.detach().to(dev)  # already there: reduced in place, no copy


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``t`` over all ranks in place (``op``: sum | max | min); returns ``t``. Wherever ``t``
    lives, the reduction runs on the communication device."""
    if world_size() == 1:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    buf = _to_comm(t)
    dist.all_reduce(buf, op=ops[op])
    if buf is not t:
        t.copy_(buf)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one (one tiny MAX all-reduce)."""
    if world_size() == 1:
        return flag
    return bool(all_reduce(torch.tensor([1 if flag else 0], dtype=torch.int32), op="max").item())


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order (pickled; under NCCL torch sends it from the current device)."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
