"""Mutable training state, checkpointed with every save (never stored in the config)."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    samples_seen: int = 0
    tokens_seen: int = 0
    sampler: dict = field(default_factory=dict)
    best_metric: Optional[float] = None
    best_tag: Optional[str] = None
    config_fingerprint: str = ""
    backbone_hash: Optional[str] = None
    # the learning-rate schedule the optimizer ran under (see engine.continue_schedule):
    # {"peak_lr", "warmup_steps", "total_steps"}
    schedule: dict = field(default_factory=dict)
    # the topology that wrote the checkpoint: ZeRO 1-3 optimizer states are partitioned per rank
    world_size: Optional[int] = None
    zero_stage: Optional[int] = None
    # optimizer steps left out for non-finite losses or gradients (train.nonfinite), in all and in a row
    skipped_steps: int = 0
    skipped_in_a_row: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and floats only: loadable with ``torch.load(weights_only=True)``."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
