"""Adapter math: ``A(y) = LN_{gamma,beta}(up(gelu_new(down(y)))) + y``, single-task and mixed-task."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def apply_adapter(
    y: torch.Tensor,
    down_w: torch.Tensor,
    down_b: torch.Tensor,
    up_w: torch.Tensor,
    up_b: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    example_index: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Apply one slot's adapter to ``y`` [B, L, d].

    With ``example_index is None`` the weights are one task's (down_w [m, d], ...): plain
    ``F.linear`` calls. Otherwise the weights carry a leading task dimension T and
    ``example_index`` [B] picks each example's task: weights are gathered per example and applied
    with batched matmuls.
    """
    dtype = y.dtype
    if example_index is None:
        z = F.linear(y, down_w.to(dtype), down_b.to(dtype))
        z = F.linear(gelu_new(z), up_w.to(dtype), up_b.to(dtype))
        z = F.layer_norm(z, (z.shape[-1],), gamma.to(dtype), beta.to(dtype), eps)
        return z + y
    if example_index.shape[0] != y.shape[0]:
        # generate() expands the batch (beams, num_return_sequences) with repeat_interleave
        reps, rem = divmod(y.shape[0], example_index.shape[0])
        if rem:
            raise ValueError(f"batch of {y.shape[0]} rows does not match {example_index.shape[0]} task ids")
        example_index = example_index.repeat_interleave(reps)
    dw = down_w.to(dtype).index_select(0, example_index)  # [B, m, d]
    uw = up_w.to(dtype).index_select(0, example_index)  # [B, d, m]
    db = down_b.to(dtype).index_select(0, example_index).unsqueeze(1)  # [B, 1, m]
    ub = up_b.to(dtype).index_select(0, example_index).unsqueeze(1)
    g = gamma.to(dtype).index_select(0, example_index).unsqueeze(1)
    b = beta.to(dtype).index_select(0, example_index).unsqueeze(1)
    z = torch.baddbmm(db, y, dw.transpose(1, 2))  # [B, L, m]
    z = torch.baddbmm(ub, gelu_new(z), uw.transpose(1, 2))  # [B, L, d]
    z = F.layer_norm(z, (z.shape[-1],), None, None, eps) * g + b
    return z + y
