"""The per-forward adapter context: which weights every hooked slot applies, for which examples.

Task ids never travel through Hugging Face signatures. ``HyperscaleModel.forward``/``generate``
generate the weights of every slot once, then run the backbone inside ``adapter_context(...)``;
the forward hooks read the active context. Outside a context a hook raises instead of silently
running the bare backbone.

Two stores hold the active context. Eager code uses a ``contextvars.ContextVar`` (per thread and per
asyncio task). ``torch.compile`` cannot trace ``ContextVar.get``/``set`` (Dynamo breaks the graph at
every hooked slot), so while Dynamo traces (``torch.compiler.is_compiling()``) ``adapter_context``
and ``active_context`` use a plain attribute of a module-level object instead: Dynamo traces the
attribute write and reads as side effects, and the weights reach the hooks as values inside the same
graph. ``adapter_context`` entered eagerly sets that attribute too, so that a separately compiled
backbone (``backbone.compile()``) called inside an eager ``adapter_context`` finds its weights.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Optional

import torch


class AdapterWeights(NamedTuple):
    """Adapter weights of every slot of one stack for the ``T`` distinct tasks of a batch.

    Shapes: down_w [T, S, m, d], down_b [T, S, m], up_w [T, S, d, m], up_b [T, S, d],
    gamma/beta [T, S, d]. ``T == 1`` is the single-task fast path.

    A NamedTuple on purpose: DeepSpeed ZeRO-3 walks module outputs (tuples, dicts, namedtuples) to
    re-gather a module's partitioned parameters for its backward; a plain object would hide them.
    """

    down_w: torch.Tensor
    down_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor

    def fields(self) -> tuple[torch.Tensor, ...]:
        return tuple(self)


@dataclass
class AdapterContext:
    weights: dict[str, AdapterWeights]  # stack name -> weights
    # per-example index into the task dimension T of the weights; None when T == 1
    example_index: Optional[torch.Tensor]
    # stack -> per slot, that slot's six tensors ([m, d]... when T == 1, else [T, m, d]...)
    slots: dict[str, list[tuple[torch.Tensor, ...]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # one unbind per tensor and forward instead of six index ops per slot in the hooks: fewer ops
        # in the forward, and one gradient (a stack) per tensor in the backward instead of one per slot
        self.slots = {}
        for stack, w in self.weights.items():
            parts = [t[0].unbind(0) if self.example_index is None else t.unbind(1) for t in w]
            self.slots[stack] = list(zip(*parts))


_ACTIVE: contextvars.ContextVar[Optional[AdapterContext]] = contextvars.ContextVar("hyperscale_adapter_context", default=None)


class _TracedStore:
    """The compile-visible store: a plain attribute, which Dynamo traces (``ContextVar`` it cannot).

    An instance attribute from the start: Dynamo guards on the instance ``__dict__``; a class-level default
    that the first compiled call then shadowed with an instance attribute would fail that guard once
    (a recompile on the second step)."""

    def __init__(self) -> None:
        self.ctx: Optional[AdapterContext] = None


_TRACED = _TracedStore()


@contextlib.contextmanager
def adapter_context(ctx: AdapterContext) -> Iterator[AdapterContext]:
    prev = _TRACED.ctx
    _TRACED.ctx = ctx
    if torch.compiler.is_compiling():
        try:
            yield ctx
        finally:
            _TRACED.ctx = prev
        return
    token = _ACTIVE.set(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.reset(token)
        _TRACED.ctx = prev


def active_context() -> Optional[AdapterContext]:
    """The innermost active context (None outside every ``adapter_context``)."""
    if torch.compiler.is_compiling():
        return _TRACED.ctx
    return _ACTIVE.get()
