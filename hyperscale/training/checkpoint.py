"""Checkpoints: DeepSpeed engine state without the frozen backbone, plus hyperscale's own files.

Layout of ``OUTPUT_DIR/checkpoints``::

    step-00000100/            one checkpoint (DeepSpeed files + the files below)
        hyperscale_config.json   model description (for export without a training config)
        run_config.yaml          the resolved run config
        trainer_state.json       TrainState (step, sampler, best metric, fingerprints)
        rng/rank-<r>.pt          every rank's RNG state
        tokenizer/               the tokenizer the run used
        COMPLETE                 written last: the SHA-256 of every file above; a checkpoint without it is
                                 ignored, one whose files do not match it is corrupt
    latest                    tag of the newest complete checkpoint (replaced atomically)
    best                      tag of the best checkpoint by the model-selection metric

A checkpoint becomes ``latest`` only after every rank finished writing it. The last ``keep_last``
checkpoints and the best one are kept; older ones are deleted.

Loading trusts nothing: every file must match the digests in ``COMPLETE`` (``--resume auto`` falls back to
the newest checkpoint that does, saying which it skipped and why), and no pickle in it may name a global
outside :data:`SAFE_GLOBALS` (DeepSpeed unpickles its files with ``weights_only=False``: a crafted file would
run code). ``HYPERSCALE_TRUST_CHECKPOINTS=1`` skips the pickle scan for a checkpoint of a DeepSpeed version that
stores other classes.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..atomic import write_text_atomic
from ..errors import CheckpointError, CheckpointNotFoundError
from . import distributed as hdist
from .state import TrainState, rng_state, set_rng_state

COMPLETE = "COMPLETE"
TAG = re.compile(r"^step-\d{8}$")
TRUST_ENV = "HYPERSCALE_TRUST_CHECKPOINTS"
# what DeepSpeed 0.19's checkpoints (ZeRO 0-3, fp32/bf16/fp16) pickle beyond tensors and builtins, and the
# numpy RNG state of checkpoints written before hyperscale stored RNG states as tensors
SAFE_GLOBALS = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
    "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "numpy.dtypes.UInt32DType", "numpy.dtypes.Float64DType", "numpy.dtypes.Int64DType",
})


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def read_pointer(ckpt_root: Path, name: str) -> Optional[str]:
    """The tag a pointer file (``latest``, ``best``) names, if it names a complete checkpoint."""
    p = ckpt_root / name
    try:
        tag = p.read_text().strip() if p.is_file() else ""
    except (OSError, UnicodeDecodeError):  # unreadable or garbage: as if missing (the fallback finds the newest)
        return None
    return tag if TAG.match(tag) and (ckpt_root / tag / COMPLETE).is_file() else None


def complete_tags(ckpt_root: Path) -> list[str]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p.name for p in ckpt_root.iterdir() if TAG.match(p.name) and (p / COMPLETE).is_file())


def find_latest(ckpt_root: Path) -> Optional[str]:
    tag = read_pointer(ckpt_root, "latest")
    if tag is None:  # pointer missing or pointing at an incomplete checkpoint: newest complete one
        tags = complete_tags(ckpt_root)
        tag = tags[-1] if tags else None
    return tag


# ------------------------------------------------------------------------------------------- integrity
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(target: Path) -> dict[str, str]:
    return {str(p.relative_to(target)): _digest(p) for p in sorted(target.rglob("*"))
            if p.is_file() and p.name != COMPLETE}


def verify(ckpt_dir: Path) -> None:
    """Raise :class:`CheckpointError` naming the first file that is missing or differs from ``COMPLETE``'s
    digest. A checkpoint written before digests were recorded (``COMPLETE`` reads ``ok``) is not checked."""
    try:
        text = (ckpt_dir / COMPLETE).read_text()
    except OSError as e:
        raise CheckpointNotFoundError(f"{ckpt_dir} is not a complete hyperscale checkpoint ({e.strerror})") from None
    if text.strip() == "ok":
        return
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{ckpt_dir / COMPLETE} is garbled; the checkpoint cannot be trusted") from None
    for name, digest in files.items():
        path = ckpt_dir / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} is missing {name}")
        if _digest(path) != digest:
            raise CheckpointError(f"checkpoint {ckpt_dir} is corrupt: {name} differs from the digest recorded when it "
                                  "was saved (truncated or overwritten?)")


def scan_pickles(ckpt_dir: Path) -> None:
    """Refuse a checkpoint whose pickles name globals outside :data:`SAFE_GLOBALS` (they would run code when
    DeepSpeed or the export unpickles them). Reads the pickles' opcodes only; executes nothing."""
    if os.environ.get(TRUST_ENV) == "1":
        return
    for path in sorted(ckpt_dir.rglob("*.pt")):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as e:  # not a torch zip file at all
            raise CheckpointError(f"{path} is not a readable torch file ({type(e).__name__}: {e}); corrupt?") from None
        bad = sorted(set(unsafe) - SAFE_GLOBALS)
        if bad:
            raise CheckpointError(f"{path} would run code when loaded: it names {', '.join(bad)}; refusing it. If "
                                  f"you wrote this checkpoint yourself with another DeepSpeed, set {TRUST_ENV}=1")


def safe_load(path: Path) -> Any:
    """``torch.load`` of a DeepSpeed checkpoint file with ``weights_only=True``, allowing :data:`SAFE_GLOBALS`."""
    allowed = []
    for dotted in SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another numpy or DeepSpeed version: not needed then
            continue
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def check_usable(ckpt_dir: Path) -> None:
    """Everything a load needs to trust ``ckpt_dir``: complete, intact, and no code in its pickles."""
    verify(ckpt_dir)
    scan_pickles(ckpt_dir)


def newest_usable(ckpt_root: Path) -> tuple[Optional[str], list[str]]:
    """The newest checkpoint of a run that passes :func:`check_usable` (``latest`` first), and a line for every
    newer one skipped."""
    latest = find_latest(ckpt_root)
    order = ([latest] if latest else []) + [t for t in reversed(complete_tags(ckpt_root)) if t != latest]
    skipped = []
    for tag in order:
        try:
            check_usable(ckpt_root / tag)
            return tag, skipped
        except CheckpointError as e:
            skipped.append(str(e))
    return None, skipped


# ------------------------------------------------------------------------------------------- save
def run_files(output_dir: Path, rank: int, model_config: Any, run_config_yaml: str, task_specs: dict,
              tokenizer: Any) -> dict[str, Any]:
    """What a checkpoint carries besides DeepSpeed's files (``files`` of :func:`save`): the model's and the run's
    configs, the full spec of every task of your own the model knows (exports carry them: README "Your own tasks"),
    and the tokenizer, saved once into ``output_dir/tokenizer`` by rank 0."""
    tok_dir = output_dir / "tokenizer"
    if rank == 0 and not tok_dir.exists():
        tokenizer.save_pretrained(str(tok_dir))
    return {"hyperscale_config.json": json.dumps(model_config.to_dict(), indent=2, sort_keys=True) + "\n",
            "run_config.yaml": run_config_yaml,
            "task_specs.json": json.dumps(task_specs, indent=2) + "\n",
            "tokenizer": tok_dir}


def save(engine: Any, ckpt_root: Path, state: TrainState, files: dict[str, Any], keep_last: int,
         is_best: bool = False) -> str:
    """Save a checkpoint on every rank; returns its tag. ``files``: name -> text or a directory to copy.

    A complete checkpoint of the same step from an earlier trajectory (a resume from an older checkpoint of
    the run) is moved aside to ``step-N.replaced-<k>``, never deleted or overwritten."""
    tag = tag_for(state.step)
    target = ckpt_root / tag
    rank = hdist.rank()
    if rank == 0 and target.exists():
        suffix = "replaced" if (target / COMPLETE).exists() else "incomplete"
        k = 1
        while target.with_name(f"{tag}.{suffix}-{k}").exists():
            k += 1
        aside = target.with_name(f"{tag}.{suffix}-{k}")
        shutil.move(str(target), str(aside))
        hdist.log0(f"an earlier checkpoint of step {state.step} was moved aside to {aside.name}")
    hdist.barrier()
    try:
        engine.save_checkpoint(str(ckpt_root), tag=tag, client_state={"hyperscale": state.to_dict()},
                               save_latest=False, exclude_frozen_parameters=True)
        (target / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), target / "rng" / f"rank-{rank}.pt")
        if rank == 0:
            (target / "trainer_state.json").write_text(json.dumps(state.to_dict(), indent=2) + "\n")
            for name, content in files.items():
                if isinstance(content, Path):
                    shutil.copytree(content, target / name, dirs_exist_ok=True)
                else:
                    (target / name).write_text(content)
    except (OSError, RuntimeError) as e:
        _explain_write_failure(ckpt_root, target, e)
        raise
    hdist.barrier()
    if rank == 0:
        write_text_atomic(target / COMPLETE, json.dumps({"version": 1, "files": _manifest(target)}, indent=1) + "\n")
        write_text_atomic(ckpt_root / "latest", tag + "\n")
        if is_best:
            write_text_atomic(ckpt_root / "best", tag + "\n")
        _prune(ckpt_root, keep_last)
    hdist.barrier()
    return tag


def _explain_write_failure(ckpt_root: Path, target: Path, error: BaseException) -> None:
    """Turn a failed write of a checkpoint on a full or read-only disk into a one-line error; other failures
    keep their traceback. The checkpoint has no COMPLETE file, so it is never used; ``latest`` is unchanged."""
    latest = find_latest(ckpt_root)
    keep = f"the previous checkpoint {latest} is intact" if latest else "no earlier checkpoint exists"
    try:
        free = shutil.disk_usage(ckpt_root).free
    except OSError:
        free = None
    if not os.access(ckpt_root, os.W_OK):
        raise CheckpointError(f"cannot write checkpoint {target}: {ckpt_root} is not writable; {keep}") from error
    if free is not None and free < (64 << 20) or getattr(error, "errno", None) == 28:
        raise CheckpointError(f"cannot write checkpoint {target}: the disk is full ({free or 0} bytes free); free "
                              f"space and resume with --resume auto ({keep})") from error


def _prune(ckpt_root: Path, keep_last: int) -> None:
    """Keep the last ``keep_last`` complete checkpoints and the best; remove interrupted saves
    (``step-N.incomplete-*``) older than the newest complete one. Replaced checkpoints stay."""
    tags = complete_tags(ckpt_root)
    for stale in ckpt_root.glob("step-*.incomplete-*"):
        if tags and stale.name.split(".")[0] <= tags[-1]:
            shutil.rmtree(stale, ignore_errors=True)
    keep = set(tags[-keep_last:])
    best = read_pointer(ckpt_root, "best")
    if best:
        keep.add(best)
    for tag in tags:
        if tag not in keep:
            shutil.rmtree(ckpt_root / tag, ignore_errors=True)


# ------------------------------------------------------------------------------------------- load
UNIVERSAL_DIR = "universal"


def universal_dir(ckpt_dir: Path) -> Path:
    """Where :func:`to_universal` writes the universal form of ``RUN/checkpoints/step-N``: ``RUN/universal/step-N``."""
    return ckpt_dir.parent.parent / UNIVERSAL_DIR / ckpt_dir.name


def to_universal(ckpt_dir: Path) -> Path:
    """DeepSpeed's universal checkpoint of ``ckpt_dir`` (rank 0 converts once; every rank waits): the optimizer
    state per parameter instead of per rank, readable on any number of ranks. hyperscale's engines do not record
    DeepSpeed's ``universal_checkpoint_info``, hence ``inject_missing_state``."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal  # DeepSpeed only for resumes

    out = universal_dir(ckpt_dir)
    if hdist.rank() == 0 and not (out / "zero" / "optimizer_state.pt").is_file():
        hdist.log0(f"converting {ckpt_dir} to DeepSpeed's universal format in {out}")
        shutil.rmtree(out, ignore_errors=True)  # an interrupted conversion
        ds_to_universal(argparse.Namespace(input_folder=str(ckpt_dir), output_folder=str(out),
                                           num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                           strict=True, inject_missing_state=True))
    hdist.barrier()
    scan_pickles(out)
    return out


def load(engine: Any, ckpt_dir: Path, universal: bool = False) -> TrainState:
    """Load engine state from a checkpoint tag directory and return its TrainState (RNG restored). ``universal``:
    through DeepSpeed's universal format (another number of ranks; the engine was built with
    ``checkpoint.load_universal``); the trainable weights and Adam state come from there, the frozen backbone
    from the model as built."""
    check_usable(ckpt_dir)
    src = to_universal(ckpt_dir) if universal else ckpt_dir
    path, client = engine.load_checkpoint(str(src.parent), tag=src.name, load_module_strict=False,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint {ckpt_dir}")
    state = TrainState.from_dict(client["hyperscale"])
    rng_file = ckpt_dir / "rng" / f"rank-{hdist.rank()}.pt"
    if rng_file.is_file():
        try:
            saved_rng = torch.load(rng_file, weights_only=True)
        except Exception:  # an older checkpoint's pickled numpy state: not restored rather than unpickled
            hdist.log0(f"{rng_file}: RNG state in the old pickled format not restored (dropout draws will differ)")
        else:
            set_rng_state(saved_rng)
    return state


def read_trainer_state(ckpt_dir: Path) -> Optional[TrainState]:
    """The TrainState a checkpoint recorded in ``trainer_state.json`` (None if absent), without DeepSpeed."""
    path = ckpt_dir / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        return TrainState.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a valid trainer state ({e}); the checkpoint is corrupt") from None


def resolve_checkpoint(spec: str, output_dir: Path) -> Optional[Path]:
    """``auto`` -> the newest usable checkpoint of the run (or None), skipping corrupt ones with a message;
    a path -> that checkpoint, which must be usable."""
    if spec == "auto":
        root = output_dir / "checkpoints"
        tag, skipped = newest_usable(root)
        for line in skipped:
            hdist.log0(f"skipping a checkpoint: {line}")
        if tag is None and skipped:
            raise CheckpointError(f"no usable checkpoint in {root}: every complete one is damaged ({skipped[0]})")
        return root / tag if tag else None
    p = Path(spec)
    for candidate in (p, p / (find_latest(p) or "-"), p / "checkpoints" / (find_latest(p / "checkpoints") or "-")):
        if (candidate / COMPLETE).is_file():
            check_usable(candidate)
            return candidate
    raise CheckpointNotFoundError(f"no complete hyperscale checkpoint at {p}: give a run directory, its checkpoints/ "
                                  "directory, or one step-* directory that holds a COMPLETE file")
