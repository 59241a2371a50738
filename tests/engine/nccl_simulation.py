"""A simulated NCCL process group for CPU tests (test support, not product code).

Under NCCL a collective on a CPU tensor raises ``RuntimeError: No backend type associated with device type cpu``;
gloo accepts it, so CPU tests cannot see the mistake. :func:`install` makes torch.distributed's tensor collectives
behave like an NCCL group towards hyperscale's own code: a collective called from outside DeepSpeed and torch (whose
tensors live with the model, on the GPU in a real run) must carry a tensor that
``hyperscale.training.distributed._to_comm`` placed on the communication device; any other tensor raises NCCL's
error. It wraps ``_to_comm`` to mark what it places, and returns a function that undoes every change.

Used in-process by ``tests/engine/test_distributed.py`` and, in launched ranks, by ``nccl_driver.py``.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import torch
import torch.distributed as dist

from hyperscale.training import distributed as hdist

NCCL_CPU_ERROR = "No backend type associated with device type cpu"
# torch.distributed's tensor collectives (each one is guarded)
TENSOR_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                      "reduce_scatter_tensor", "broadcast", "reduce", "all_to_all_single", "gather", "scatter")
MARK = "_hyperscale_comm"


def install() -> Callable[[], None]:
    """Simulate NCCL from now on; the returned function restores torch.distributed and hyperscale as they were."""
    saved: dict[tuple[Any, str], Any] = {}

    def patch(owner: Any, name: str, value: Any) -> None:
        saved[(owner, name)] = getattr(owner, name)
        setattr(owner, name, value)

    patch(hdist, "_to_comm", _marking(hdist._to_comm))
    for name in TENSOR_COLLECTIVES:
        if hasattr(dist, name):
            patch(dist, name, _guarded(getattr(dist, name)))

    def undo() -> None:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)

    return undo


def _marking(to_comm: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    @functools.wraps(to_comm)
    def placed(t: torch.Tensor) -> torch.Tensor:
        out = to_comm(t)
        out = out.detach().clone() if out is t else out  # a buffer of its own, so the mark stays off the caller's tensor
        setattr(out, MARK, True)
        return out

    return placed


def _guarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def collective(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not caller.startswith(("deepspeed", "torch")):
            for t in _tensors(args, kwargs):
                if not getattr(t, MARK, False):
                    raise RuntimeError(f"{NCCL_CPU_ERROR} (simulated NCCL: {caller} called "
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
