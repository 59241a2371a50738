"""Hypernetworks that generate every adapter of a stack in one batched call.

``hyperformer++``: per stack, the conditioning vector of slot (task t, layer l, position p) is
``I = LayerNorm(projector([task_t ; layer_l ; position_p]))``; one shared generator maps I to all
adapter tensors of that slot. ``hyperformer`` (per-layer variant, ``per_slot=True``): the
projector sees the task embedding only and every slot owns its generator.

The generator's output is the concatenation, in this order, of: down weight [m*d] (row-major
[m, d]), down bias [m], up weight [d*m] (row-major [d, m]), up bias [d], output-LayerNorm gamma
[d] and beta [d]. One Linear (or one einsum for per-slot generators) produces them all.
"""
from __future__ import annotations

import torch
from torch import nn

from .attach import POSITIONS, slot_layout
from .context import AdapterWeights

GEN_STD = 0.01


def generator_sizes(d_model: int, bottleneck: int) -> list[int]:
    m, d = bottleneck, d_model
    return [m * d, m, d * m, d, d, d]


def split_generated(flat: torch.Tensor, d_model: int, bottleneck: int) -> AdapterWeights:
    """[T, S, out] -> AdapterWeights with the documented layout."""
    m, d = bottleneck, d_model
    t, s = flat.shape[:2]
    down_w, down_b, up_w, up_b, gamma, beta = flat.split(generator_sizes(d, m), dim=-1)
    return AdapterWeights(
        down_w=down_w.reshape(t, s, m, d),
        down_b=down_b,
        up_w=up_w.reshape(t, s, d, m),
        up_b=up_b,
        gamma=gamma,
        beta=beta,
    )


class StackHyperNet(nn.Module):
    """The hypernetwork of one stack (encoder or decoder)."""

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        bottleneck: int,
        task_dim: int = 64,
        layer_dim: int = 64,
        position_dim: int = 64,
        hidden_dim: int = 128,
        cond_dim: int = 64,
        per_slot: bool = False,
    ):
        super().__init__()
        self.d_model, self.bottleneck, self.per_slot = d_model, bottleneck, per_slot
        self.n_slots = n_layers * len(POSITIONS)
        out = sum(generator_sizes(d_model, bottleneck))
        if per_slot:
            in_dim = task_dim
        else:
            self.layer_embeddings = nn.Embedding(n_layers, layer_dim)
            self.position_embeddings = nn.Embedding(len(POSITIONS), position_dim)
            in_dim = task_dim + layer_dim + position_dim
            layout = torch.tensor(slot_layout(n_layers), dtype=torch.long)
            self.register_buffer("slot_layer", layout[:, 0].clone(), persistent=False)
            self.register_buffer("slot_position", layout[:, 1].clone(), persistent=False)
        self.projector = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, cond_dim))
        self.cond_norm = nn.LayerNorm(cond_dim, eps=1e-6)
        if per_slot:
            self.gen_weight = nn.Parameter(torch.empty(self.n_slots, out, cond_dim))
            self.gen_bias = nn.Parameter(torch.zeros(self.n_slots, out))
        else:
            self.generator = nn.Linear(cond_dim, out)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=GEN_STD)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, std=1.0)
        if self.per_slot:
            nn.init.normal_(self.gen_weight, std=GEN_STD)
            nn.init.zeros_(self.gen_bias)
        self.cond_norm.reset_parameters()

    def conditioning(self, task_emb: torch.Tensor) -> torch.Tensor:
        """task_emb [T, task_dim] -> I: [T, S, cond] (shared generator) or [T, cond] (per slot)."""
        if self.per_slot:
            return self.cond_norm(self.projector(task_emb))
        t, s = task_emb.shape[0], self.n_slots
        layer = self.layer_embeddings(self.slot_layer)  # [S, layer_dim]
        pos = self.position_embeddings(self.slot_position)  # [S, position_dim]
        x = torch.cat(
            [task_emb[:, None, :].expand(t, s, -1), layer[None].expand(t, s, -1), pos[None].expand(t, s, -1)], dim=-1
        )
        return self.cond_norm(self.projector(x))

    def forward(self, task_emb: torch.Tensor) -> AdapterWeights:
        cond = self.conditioning(task_emb)
        if self.per_slot:
            flat = torch.einsum("tc,soc->tso", cond, self.gen_weight) + self.gen_bias
        else:
            flat = self.generator(cond)
        return split_generated(flat, self.d_model, self.bottleneck)


class HyperNetBank(nn.Module):
    """Task embeddings (shared by both stacks) and one hypernetwork per stack."""

    kind = "hypernet"

    def __init__(self, n_tasks: int, layers: dict[str, int], d_model: int, bottleneck: int, task_dim: int = 64,
                 layer_dim: int = 64, position_dim: int = 64, hidden_dim: int = 128, cond_dim: int = 64,
                 per_slot: bool = False):
        super().__init__()
        self.task_embeddings = nn.Parameter(torch.randn(n_tasks, task_dim))
        self.stacks = nn.ModuleDict(
            {
                stack: StackHyperNet(n, d_model, bottleneck, task_dim, layer_dim, position_dim, hidden_dim, cond_dim,
                                     per_slot)
                for stack, n in layers.items()
            }
        )

    def forward(self, task_index: torch.Tensor) -> dict[str, AdapterWeights]:
        emb = self.task_embeddings.index_select(0, task_index)
        return {stack: net(emb) for stack, net in self.stacks.items()}

    @torch.no_grad()
    def add_task(self, init: str | int) -> None:
        old = self.task_embeddings.data
        if init == "mean":
            row = old.mean(0, keepdim=True)
        elif init == "random":
            row = torch.randn(1, old.shape[1], dtype=old.dtype, device=old.device)
        else:
            row = old[int(init)][None].clone()
        self.task_embeddings = nn.Parameter(torch.cat([old, row], 0), requires_grad=self.task_embeddings.requires_grad)

    def param_groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {"task embeddings": ["task_embeddings"]}
        for stack in self.stacks:
            groups[f"hypernetwork ({stack})"] = [f"stacks.{stack}."]
        return groups
