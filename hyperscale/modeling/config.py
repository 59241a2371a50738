"""``HyperscaleConfig``: what a ``HyperscaleModel`` is built from and saved as ``hyperscale_config.json``.

The config is immutable (a frozen dataclass). Values derived while building a model (the backbone's
config, the hash of its frozen weights, tasks added later) never go into the caller's config: the
model holds a new one made with ``dataclasses.replace``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError

METHODS = ("hyperformer++", "hyperformer", "adapters", "adapters-shared-norm", "finetune")
CONFIG_NAME = "hyperscale_config.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class HyperscaleConfig:
    """Everything needed to rebuild a model from its saved trainable weights.

    Frozen: assigning a field raises ``dataclasses.FrozenInstanceError``; derive a new config with
    ``dataclasses.replace(config, field=value)`` (which validates again). ``tasks`` and
    ``backbone_config`` are copied on construction, so the caller's list/dict is never shared.
    """

    method: str
    tasks: list[str]
    reduction_factor: int = 32
    task_embedding_dim: int = 64
    layer_embedding_dim: int = 64
    position_embedding_dim: int = 64
    projector_hidden_dim: int = 128
    conditioning_dim: int = 64
    adapter_ln_eps: float = 1e-5
    train_layer_norms: bool = True
    backbone_id: Optional[str] = None
    backbone_hash: Optional[str] = None
    backbone_config: dict = field(default_factory=dict)
    materialized_from: Optional[str] = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if not self.tasks:
            raise ConfigError("tasks is empty: give at least one task name")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"task names must be unique, got {self.tasks}")
        if self.reduction_factor < 1:
            raise ConfigError(f"reduction_factor must be >= 1, got {self.reduction_factor}")
        # own copies: a list or dict the caller keeps mutating must not change this config
        object.__setattr__(self, "tasks", list(self.tasks))
        object.__setattr__(self, "backbone_config", dict(self.backbone_config or {}))

    @property
    def uses_adapters(self) -> bool:
        return self.method != "finetune"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HyperscaleConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown keys in {CONFIG_NAME}: {sorted(unknown)} (written by a newer hyperscale?)")
        return cls(**d)


__all__ = ["METHODS", "CONFIG_NAME", "FORMAT_VERSION", "HyperscaleConfig"]
