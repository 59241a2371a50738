"""The model's configuration: ``ArchConfig`` (the adapter/hypernetwork architecture) and ``HyperscaleConfig``
(what a ``HyperscaleModel`` is built from and saved as ``hyperscale_config.json``).

``ArchConfig`` is the one definition of every architecture field, with its default, its documentation and its
validation. Both configs that describe a model's architecture are built from it by inheritance:

* ``HyperscaleConfig(ArchConfig)`` adds what a saved model also needs (tasks, backbone identity and hash);
* the run config's ``model:`` section (``hyperscale.training.config.ModelConfig(ArchConfig)``) adds the
  run-only settings (backbone spec, dropout, gradient checkpointing, init seed).

So every architecture field can be set from a run config's YAML, is validated once, and is saved in
``hyperscale_config.json``. ``config.arch`` is the architecture part alone (an ``ArchConfig``), and
``config.arch_dict()`` its fields as keyword arguments (``HyperscaleModel.from_backbone(bb, tasks, **arch_dict)``).

The configs are immutable (frozen dataclasses). Values derived while building a model (the backbone's
config, the hash of its frozen weights, tasks added later) never go into the caller's config: the
model holds a new one made with ``dataclasses.replace``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, get_type_hints

from ..errors import ConfigError

METHODS = ("hyperformer++", "hyperformer", "adapters", "adapters-shared-norm", "finetune")
CONFIG_NAME = "hyperscale_config.json"
FORMAT_VERSION = 1


def _arch(default: Any, help: str, **rules: Any) -> Any:
    """An architecture field: its default, a one-line help and its validation rules (``choices``, ``min``,
    ``gt``), kept in the field's metadata so that validation, the CLI and the tests read them from here."""
    return field(default=default, metadata={"help": help, **rules})


@dataclass(frozen=True)
class ArchConfig:
    """The adapter/hypernetwork architecture: every field a model's trainable weights are shaped by.

    Frozen; validated on construction (and so by ``dataclasses.replace``). Error messages name the field as
    the caller knows it: ``reduction_factor`` here, ``model.reduction_factor`` in a run config.
    """

    method: str = _arch("hyperformer++", "how task adapters are produced", choices=METHODS)
    reduction_factor: int = _arch(32, "d_model / adapter bottleneck", min=1)
    task_embedding_dim: int = _arch(64, "hypernetwork task embedding size", min=1)
    layer_embedding_dim: int = _arch(64, "hyperformer++ layer-id embedding size", min=1)
    position_embedding_dim: int = _arch(64, "hyperformer++ adapter-position embedding size", min=1)
    projector_hidden_dim: int = _arch(128, "hidden size of the task projector MLP", min=1)
    conditioning_dim: int = _arch(64, "size of the projected embedding the hypernetworks read", min=1)
    adapter_ln_eps: float = _arch(1e-5, "epsilon of the adapters' layer norms", gt=0.0)
    train_layer_norms: bool = _arch(True, "train the backbone's layer norms along with the adapters")

    # how errors name a field: "" for a bare or saved model config, "model." for a run config's model section
    _KEY_PREFIX = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(ArchConfig):
            _check_arch_field(f, getattr(self, f.name), self._KEY_PREFIX + f.name)

    @property
    def arch(self) -> "ArchConfig":
        """The architecture part of this config alone."""
        return ArchConfig(**self.arch_dict())

    def arch_dict(self) -> dict:
        """The architecture fields and their values (keyword arguments of ``ArchConfig``/``HyperscaleConfig``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ArchConfig)}


ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(ArchConfig))
ARCH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ArchConfig)}  # read by the CLIs; written once, above
_ARCH_TYPES = get_type_hints(ArchConfig)


def _check_arch_field(f: dataclasses.Field, value: Any, key: str) -> None:
    tp, rules = _ARCH_TYPES[f.name], f.metadata
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(rules['choices'])}")
    if "min" in rules and value < rules["min"]:
        raise ConfigError(f"{key} must be >= {rules['min']}, got {value}")
    if "gt" in rules and not value > rules["gt"]:
        raise ConfigError(f"{key} must be > {rules['gt']}, got {value}")


@dataclass(frozen=True, kw_only=True)
class HyperscaleConfig(ArchConfig):
    """Everything needed to rebuild a model from its saved trainable weights: the architecture
    (``ArchConfig``'s fields) plus the tasks and the backbone it was built on.

    Frozen: assigning a field raises ``dataclasses.FrozenInstanceError``; derive a new config with
    ``dataclasses.replace(config, field=value)`` (which validates again). ``tasks`` and
    ``backbone_config`` are copied on construction, so the caller's list/dict is never shared.
    The fields added here are keyword-only.
    """

    tasks: list[str]
    backbone_id: Optional[str] = None
    backbone_hash: Optional[str] = None
    backbone_config: dict = field(default_factory=dict)
    materialized_from: Optional[str] = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.tasks, str) or not all(isinstance(t, str) and t for t in self.tasks):
            raise ConfigError(f"tasks must be a list of task names (strings), got {self.tasks!r}; e.g. "
                              "tasks=['rte', 'mrpc']")
        if not self.tasks:
            raise ConfigError("tasks is empty: give at least one task name")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"task names must be unique, got {self.tasks}")
        # own copies: a list or dict the caller keeps mutating must not change this config
        object.__setattr__(self, "tasks", list(self.tasks))
        object.__setattr__(self, "backbone_config", dict(self.backbone_config or {}))

    @classmethod
    def from_arch(cls, arch: ArchConfig, tasks: list[str], **kwargs: Any) -> "HyperscaleConfig":
        """The config of a model with architecture ``arch`` (an ``ArchConfig`` or a run config's model section)."""
        return cls(**arch.arch_dict(), tasks=tasks, **kwargs)

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


__all__ = ["METHODS", "CONFIG_NAME", "FORMAT_VERSION", "ARCH_FIELDS", "ArchConfig", "HyperscaleConfig"]
