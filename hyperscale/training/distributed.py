"""Rank helpers and every tensor collective of hyperscale.

No other module of the package calls a ``torch.distributed`` collective (a test scans for it). The
rule that makes multi-GPU runs work: a collective runs on the *communication device* of the process
group, which is ``cuda:LOCAL_RANK`` under NCCL (DeepSpeed's CUDA accelerator picks ``nccl``, and an
NCCL group has no CPU backend: ``RuntimeError: No backend type associated with device type cpu``)
and the CPU under gloo. Callers hand tensors from wherever they live; :func:`all_reduce` moves them
to that device, reduces, and writes the result back into the caller's tensor.

:func:`init` sets the CUDA device *before* the process group exists (NCCL binds a rank to the
current device when the group is created; set it later and rank 1 may talk through GPU 0).

CPU tests over gloo cannot see a CPU tensor handed to an NCCL group, so the module has a simulation
(``HYPERSCALE_SIMULATE_NCCL=1``, or :func:`simulate_nccl`): every tensor collective issued outside
DeepSpeed and torch (whose tensors live with the model, on the GPU in a real run) must carry a tensor
that this module placed on the communication device; any other tensor fails exactly as NCCL fails.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..errors import ConfigError, current_rank, leave_process_group
from .logging import hidden_output
from ..launch import setup_distributed_env

SIMULATE_ENV = "HYPERSCALE_SIMULATE_NCCL"
_NCCL_CPU_ERROR = "No backend type associated with device type cpu"
# torch.distributed's tensor collectives (the simulation guards each of them)
_TENSOR_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                       "reduce_scatter_tensor", "broadcast", "reduce", "all_to_all_single", "gather", "scatter")
_simulating = False


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
    if os.environ.get(SIMULATE_ENV) == "1":
        simulate_nccl()
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
    """Print once, from rank 0."""
    if is_main():
        from tqdm import tqdm

        tqdm.write(f"[hyperscale] {msg}", file=sys.stdout)  # above the training progress bar, not inside it
        sys.stdout.flush()


# ------------------------------------------------------------------------------------- collectives
def comm_device() -> torch.device:
    """The device the default process group communicates on: ``cuda:<current>`` under NCCL, else CPU."""
    if is_initialized() and "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_comm(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the communication device: ``t`` itself when it lives there, else a copy (always a copy when
    simulating)."""
    if _simulating:
        out = t.detach().clone()
        out._hyperscale_comm = True  # placed by this module: the simulated NCCL group accepts it
        return out
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


# ------------------------------------------------------------------------------------- simulation
def simulate_nccl() -> None:
    """Make torch.distributed's tensor collectives behave like an NCCL group towards hyperscale's code:
    a tensor that this module did not place on the communication device raises NCCL's error. Collectives
    issued by DeepSpeed or torch itself are left alone (in a GPU run their tensors live on the GPU)."""
    global _simulating
    if _simulating:
        return
    _simulating = True
    for name in _TENSOR_COLLECTIVES:
        original = getattr(dist, name, None)
        if original is not None:
            setattr(dist, name, _guarded(original))


def _guarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def collective(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not caller.startswith(("deepspeed", "torch")):
            for t in _tensors(args, kwargs):
                if not getattr(t, "_hyperscale_comm", False):
                    raise RuntimeError(f"{_NCCL_CPU_ERROR} (simulated NCCL: {caller} called "
                                       f"torch.distributed.{fn.__name__} on a tensor not placed on the "
                                       "communication device; use hyperscale.training.distributed)")
        return fn(*args, **kwargs)

    return collective


def _tensors(args: tuple, kwargs: dict) -> list:
    found = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(x for x in a if isinstance(x, torch.Tensor))
    return found
