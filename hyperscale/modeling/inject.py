"""Putting adapters into a backbone and taking them out again, plus which weights train.

``attach_adapters`` registers one forward hook per attach point (``attach.iter_slots``: the data of
where adapters sit) and returns an ``AdapterHooks`` that owns their handles. ``AdapterHooks.remove()``
(or leaving its ``with`` block) removes exactly those hooks through their ``RemovableHandle``s: hooks
and pre-hooks that other code (DeepSpeed, profilers, users) registered on the same modules stay.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .adapter import apply_adapter
from .attach import iter_slots
from .context import AdapterContext, active_context

# set on a backbone while hyperscale hooks sit on it: a second HyperscaleModel must not add its own
ATTACHED_FLAG = "_hyperscale_attached"


def _in_autograd_backward() -> bool:
    """Whether the autograd engine is running a backward pass on this thread right now.

    Why it exists: non-reentrant activation checkpointing (``torch.utils.checkpoint`` with
    ``use_reentrant=False``, what ``gradient_checkpointing_enable`` sets up) re-runs the forward of
    checkpointed blocks *inside* ``loss.backward()``, after ``adapter_context`` has exited. The hooks
    then see no active context and must reuse the one of the forward being recomputed. Torch has no
    public "am I inside backward?" query, hence the private ``torch._C._current_graph_task_id()``
    (-1 outside a backward graph task). It is called only on the no-context path, never in a normal
    forward.

    If torch changes it: should the function disappear we answer True, so recomputation keeps working
    and only a misuse (calling the bare backbone while checkpointing is on) reuses the last context
    instead of raising. Should its meaning change, either checkpointed training raises "outside an
    adapter context" during backward or that misuse goes unreported; tests/modeling/test_model_inject.py
    (``test_backward_detection``) and the checkpointing tests in test_model_mixed_tasks.py catch it.
    """
    graph_task_id = getattr(torch._C, "_current_graph_task_id", None)
    return True if graph_task_id is None else graph_task_id() != -1


def _adapter_hook(stack: str, slot: int, eps: float,
                  recompute_context: Callable[[], Optional[AdapterContext]]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        ctx = active_context()
        # compiled: recomputation (checkpointing) happens inside the traced graph, which saw the context
        if ctx is None and not torch.compiler.is_compiling() and _in_autograd_backward():
            ctx = recompute_context()  # activation checkpointing: recomputation inside backward
        if ctx is None:
            raise RuntimeError(
                "hyperscale adapter hook ran outside an adapter context: call the HyperscaleModel "
                "(model(..., task_ids=...) / model.generate(..., task_ids=...)), not its backbone"
            )
        y = output[0] if isinstance(output, tuple) else output
        out = apply_adapter(y, *ctx.slots[stack][slot], ctx.example_index, eps)
        return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

    return hook


class AdapterHooks:
    """The forward hooks hyperscale registered on one backbone, and only those.

    ``remove()`` (idempotent) or leaving a ``with`` block detaches them through their handles.
    ``copy.deepcopy((backbone, hooks))`` yields a backbone copy and an ``AdapterHooks`` whose handles
    point into that copy (``RemovableHandle`` deep-copies its hook dicts through the shared memo).
    """

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        self._handles: list[tuple[str, RemovableHandle]] = []
        # a plain bool besides the handles: torch.compile traces the forward's `attached` check, and Dynamo
        # cannot represent a RemovableHandle made outside the traced frame (reading the list breaks the graph)
        self._attached = False

    def _add(self, module_path: str, handle: RemovableHandle) -> None:
        self._handles.append((module_path, handle))
        self._attached = True

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def module_paths(self) -> list[str]:
        """Dotted paths (from the backbone root) of the hooked modules, in slot order."""
        return [path for path, _ in self._handles]

    def __len__(self) -> int:
        return len(self._handles)

    def __iter__(self) -> Iterator[tuple[str, RemovableHandle]]:
        return iter(list(self._handles))

    def remove(self) -> None:
        if not self._handles:
            return
        for _, handle in self._handles:
            handle.remove()
        self._handles = []
        self._attached = False
        setattr(self.backbone, ATTACHED_FLAG, False)

    def __enter__(self) -> "AdapterHooks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"AdapterHooks({len(self._handles)} hooks{'' if self._handles else ', detached'})"


def attach_adapters(backbone: nn.Module, eps: float,
                    recompute_context: Callable[[], Optional[AdapterContext]]) -> AdapterHooks:
    """Hook an adapter onto every attach point of ``backbone``; the hooks read the active ``adapter_context``.

    ``recompute_context`` returns the context to use when a hook runs inside backward without an active
    context (activation checkpointing recomputing a forward), or None.
    """
    if getattr(backbone, ATTACHED_FLAG, False):
        raise ValueError("this backbone already carries hyperscale adapters (another HyperscaleModel wraps it); "
                         "give each HyperscaleModel its own backbone (e.g. copy.deepcopy(backbone))")
    hooks = AdapterHooks(backbone)
    try:
        for slot, module in iter_slots(backbone):
            hooks._add(slot.module_path,
                       module.register_forward_hook(_adapter_hook(slot.stack, slot.index, eps, recompute_context)))
    except BaseException:
        hooks.remove()
        raise
    setattr(backbone, ATTACHED_FLAG, True)
    return hooks


def _is_layer_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("LayerNorm")


def set_trainable(backbone: nn.Module, bank: Optional[nn.Module], uses_adapters: bool,
                  train_layer_norms: bool) -> None:
    """Adapter methods: freeze the backbone except (optionally) its layer norms, train the bank.
    ``finetune``: train every backbone weight."""
    if not uses_adapters:
        backbone.requires_grad_(True)
        if bank is not None:
            bank.requires_grad_(True)
        return
    backbone.requires_grad_(False)
    if train_layer_norms:
        for mod in backbone.modules():
            if _is_layer_norm(mod):
                mod.requires_grad_(True)
    if bank is not None:
        bank.requires_grad_(True)


__all__ = ["AdapterHooks", "attach_adapters", "set_trainable", "ATTACHED_FLAG"]
