"""Where adapters attach inside a Hugging Face T5, described as data.

An *attach point* names an upstream submodule whose output is the sublayer output ``y`` that an
adapter transforms (``y -> A(y)``) before the block's own dropout and residual add. Nothing of the
upstream model is copied: we register forward hooks on these modules.

Slot order inside a stack is ``layer * len(POSITIONS) + position_index``; ``POSITIONS`` follows the
reference implementation's ``adapters_block_type`` rows (0 = feed-forward, 1 = self-attention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

STACKS: tuple[str, ...] = ("encoder", "decoder")
POSITIONS: tuple[str, ...] = ("ff", "self_attn")

# position -> path of the hooked module inside one T5 block; "{-1}" means "the block's last layer"
# (the feed-forward layer is layer[1] in an encoder block and layer[2] in a decoder block).
# Cross-attention (decoder layer[1]) carries no adapter.
T5_ATTACH_POINTS: dict[str, str] = {
    "self_attn": "layer.0.SelfAttention",
    "ff": "layer.-1.DenseReluDense",
}


@dataclass(frozen=True)
class Slot:
    stack: str
    layer: int
    position: str
    index: int  # slot index inside its stack
    module_path: str  # dotted path from the backbone root (``backbone.get_submodule(module_path)``)


def _get(module: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """The submodule at ``dotted`` and its real path (negative indices resolved, for ``get_submodule``)."""
    parts = []
    for part in dotted.split("."):
        if part.lstrip("-").isdigit():
            i = int(part)
            i = i + len(module) if i < 0 else i  # type: ignore[arg-type]
            module = module[i]  # type: ignore[index]
            parts.append(str(i))
        else:
            module = getattr(module, part)
            parts.append(part)
    return module, ".".join(parts)


def num_layers(backbone: nn.Module, stack: str) -> int:
    blocks = getattr(getattr(backbone, stack, None), "block", None)
    if blocks is None:
        raise ValueError(
            f"backbone {type(backbone).__name__} has no `{stack}.block`: hyperscale attaches to T5-family "
            "encoder-decoder models (T5, T5 v1.1, flan-t5, mT5)"
        )
    return len(blocks)


def iter_slots(backbone: nn.Module, attach_points: dict[str, str] = T5_ATTACH_POINTS) -> Iterator[tuple[Slot, nn.Module]]:
    """Yield every (slot, hooked module) of a T5-family backbone, in slot order per stack."""
    for stack in STACKS:
        if not hasattr(backbone, stack) or not hasattr(getattr(backbone, stack), "block"):
            raise ValueError(
                f"backbone {type(backbone).__name__} has no `{stack}.block`: hyperscale attaches to T5-family "
                "encoder-decoder models (T5, T5 v1.1, flan-t5, mT5)"
            )
        for layer in range(num_layers(backbone, stack)):
            for p, position in enumerate(POSITIONS):
                module, path = _get(backbone, f"{stack}.block.{layer}.{attach_points[position]}")
                yield Slot(stack, layer, position, layer * len(POSITIONS) + p, path), module


def slot_layout(n_layers: int) -> list[tuple[int, int]]:
    """(layer, position_index) for every slot of a stack of ``n_layers`` blocks, in slot order."""
    return [(layer, p) for layer in range(n_layers) for p in range(len(POSITIONS))]
