"""The per-forward adapter context: which weights every hooked slot applies, for which examples.

Task ids never travel through Hugging Face signatures. ``HyperscaleModel.forward``/``generate``
generate the weights of every slot once, then run the backbone inside ``adapter_context(...)``;
the forward hooks read the active context. Outside a context a hook raises instead of silently
running the bare backbone.
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


@contextlib.contextmanager
def adapter_context(ctx: AdapterContext) -> Iterator[AdapterContext]:
    token = _ACTIVE.set(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.reset(token)


def active_context() -> Optional[AdapterContext]:
    return _ACTIVE.get()
