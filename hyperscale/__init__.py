"""hyperscale: parameter-efficient multi-task fine-tuning of T5 with shared hypernetworks, on DeepSpeed.

    from hyperscale import HyperscaleModel, load_config, Recipe

The names below load on first use (PEP 562), as transformers does: ``import hyperscale.launch`` in a SLURM
launch script stays free of torch, transformers and DeepSpeed.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    # the model
    "HyperscaleModel": "hyperscale.modeling.model",
    "HyperscaleConfig": "hyperscale.modeling.config",
    "ArchConfig": "hyperscale.modeling.config",
    "METHODS": "hyperscale.modeling.config",
    "load_backbone": "hyperscale.modeling.io",
    "load_reference_checkpoint": "hyperscale.modeling.reference",
    # training
    "RunConfig": "hyperscale.training.config",
    "load_config": "hyperscale.training.config",
    "Recipe": "hyperscale.training.recipe",
    "export_checkpoint": "hyperscale.training.export",
    "load_export": "hyperscale.training.export",
    # data
    "default_tokenizer": "hyperscale.data.tokenization",
    "load_multitask_splits": "hyperscale.data.loading",
    "MultiTaskSampler": "hyperscale.data.sampler",
    "get_task": "hyperscale.data.tasks",
    # errors
    "HyperscaleError": "hyperscale.errors",
    "ConfigError": "hyperscale.errors",
    "DataError": "hyperscale.errors",
    "CheckpointError": "hyperscale.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hyperscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
