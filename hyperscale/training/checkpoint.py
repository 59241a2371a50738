"""Checkpoints: DeepSpeed engine state without the frozen backbone, plus hyperscale's own files.

Layout of ``OUTPUT_DIR/checkpoints``::

    step-00000100/            one checkpoint (DeepSpeed files + the files below)
        hyperscale_config.json   model description (for export without a training config)
        run_config.yaml          the resolved run config
        trainer_state.json       TrainState (step, sampler, best metric, fingerprints)
        rng/rank-<r>.pt          every rank's RNG state
        tokenizer/               the tokenizer the run used
        COMPLETE                 written last: a checkpoint without it is ignored
    latest                    tag of the newest complete checkpoint (replaced atomically)
    best                      tag of the best checkpoint by the model-selection metric

A checkpoint becomes ``latest`` only after every rank finished writing it. The last ``keep_last``
checkpoints and the best one are kept; older ones are deleted.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, RunExistsError
from . import distributed as hdist
from .state import TrainState, rng_state, set_rng_state

COMPLETE = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_pointer(ckpt_root: Path, name: str) -> Optional[str]:
    p = ckpt_root / name
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag if tag and (ckpt_root / tag / COMPLETE).is_file() else None


def complete_tags(ckpt_root: Path) -> list[str]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p.name for p in ckpt_root.iterdir() if p.is_dir() and (p / COMPLETE).is_file())


def find_latest(ckpt_root: Path) -> Optional[str]:
    tag = read_pointer(ckpt_root, "latest")
    if tag is None:  # pointer missing or pointing at an incomplete checkpoint: newest complete one
        tags = complete_tags(ckpt_root)
        tag = tags[-1] if tags else None
    return tag


def save(engine: Any, ckpt_root: Path, state: TrainState, files: dict[str, Any], keep_last: int,
         is_best: bool = False) -> str:
    """Save a checkpoint on every rank; returns its tag. ``files``: name -> text or a directory to copy."""
    tag = tag_for(state.step)
    target = ckpt_root / tag
    rank = hdist.rank()
    if rank == 0 and target.exists():
        # an earlier, interrupted save of the same step (no COMPLETE): move it aside, never delete blindly
        if (target / COMPLETE).exists():
            raise RunExistsError(f"checkpoint {target} already exists and is complete; refusing to overwrite it")
        shutil.move(str(target), str(target) + f".incomplete-{os.getpid()}")
    hdist.barrier()
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state={"hyperscale": state.to_dict()}, save_latest=False,
                           exclude_frozen_parameters=True)
    (target / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), target / "rng" / f"rank-{rank}.pt")
    if rank == 0:
        (target / "trainer_state.json").write_text(json.dumps(state.to_dict(), indent=2) + "\n")
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copytree(content, target / name, dirs_exist_ok=True)
            else:
                (target / name).write_text(content)
    hdist.barrier()
    if rank == 0:
        (target / COMPLETE).write_text("ok\n")
        _atomic_write(ckpt_root / "latest", tag + "\n")
        if is_best:
            _atomic_write(ckpt_root / "best", tag + "\n")
        _prune(ckpt_root, keep_last)
    hdist.barrier()
    return tag


def _prune(ckpt_root: Path, keep_last: int) -> None:
    tags = complete_tags(ckpt_root)
    keep = set(tags[-keep_last:])
    best = read_pointer(ckpt_root, "best")
    if best:
        keep.add(best)
    for tag in tags:
        if tag not in keep:
            shutil.rmtree(ckpt_root / tag, ignore_errors=True)


def load(engine: Any, ckpt_dir: Path) -> TrainState:
    """Load engine state from a checkpoint tag directory and return its TrainState (RNG restored)."""
    if not (ckpt_dir / COMPLETE).is_file():
        raise CheckpointNotFoundError(f"{ckpt_dir} is not a complete hyperscale checkpoint (no {COMPLETE} file)")
    path, client = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name, load_module_strict=False,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint {ckpt_dir}")
    state = TrainState.from_dict(client["hyperscale"])
    rng_file = ckpt_dir / "rng" / f"rank-{hdist.rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def read_trainer_state(ckpt_dir: Path) -> Optional[TrainState]:
    """The TrainState a checkpoint recorded in ``trainer_state.json`` (None if absent), without DeepSpeed."""
    path = ckpt_dir / "trainer_state.json"
    if not path.is_file():
        return None
    return TrainState.from_dict(json.loads(path.read_text()))


def resolve_checkpoint(spec: str, output_dir: Path) -> Optional[Path]:
    """``auto`` -> latest complete checkpoint of the run (or None); a path -> that checkpoint."""
    if spec == "auto":
        root = output_dir / "checkpoints"
        tag = find_latest(root)
        return root / tag if tag else None
    p = Path(spec)
    if (p / COMPLETE).is_file():
        return p
    if p.is_dir() and find_latest(p):
        return p / find_latest(p)  # type: ignore[operator]
    if p.is_dir() and find_latest(p / "checkpoints"):
        return p / "checkpoints" / find_latest(p / "checkpoints")  # type: ignore[operator]
    raise CheckpointNotFoundError(f"no complete hyperscale checkpoint at {p}: give a run directory, its checkpoints/ "
                            "directory, or one step-* directory that holds a COMPLETE file")
