"""Resume checks: the checkpoint a run continues from, and every refusal that can be made before data, model and
engine are built (DeepSpeed fails on mismatched shapes, unclearly): the model/tasks fingerprint, the sampler's
settings, the ZeRO stage (another number of ranks goes through DeepSpeed's universal format), then, once the data
is read, the sampler's state and, before DeepSpeed loads, the backbone's hash. The auto settings are resolved here
too, because a resume under ``deepspeed.zero_stage=auto`` keeps its checkpoint's stage."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml

from ..data.sampler import MultiTaskSampler
from ..errors import CheckpointNotFoundError, ConfigError
from . import checkpoint as ckpt
from . import distributed as hdist
from .auto import resolve_auto
from .config import AUTO, RunConfig, resume_differences
from .state import TrainState

# the sampler's settings a checkpoint records -> their run-config names (the global batch of every step follows them)
SAMPLER_SETTINGS = {"global_batch_size": "train.global_batch_size", "seed": "train.seed",
                    "temperature": "sampler.temperature", "mode": "sampler.mode",
                    "group_by_length": "sampler.group_by_length"}


def resume_point(cfg: RunConfig, resume: Optional[str], output_dir: Path) -> tuple[Optional[Path],
                                                                                    Optional[TrainState]]:
    """The checkpoint to continue from (None: a new run) and its recorded TrainState, refused when it cannot
    continue this run's model, tasks or sampled batches."""
    if not resume:
        return None, None
    resume_from = ckpt.resolve_checkpoint(resume, output_dir)
    if resume_from is None:
        if resume != "auto":
            raise CheckpointNotFoundError(f"nothing to resume at {resume}")
        return None, None
    saved = ckpt.read_trainer_state(resume_from)
    if saved is not None:
        check_fingerprint(cfg, resume_from, saved.config_fingerprint)
        check_sampler_config(cfg, resume_from, saved)
    return resume_from, saved


def resolve_auto_settings(cfg: RunConfig, saved: Optional[TrainState], resume_from: Optional[Path], rank: int,
                          world: int, device_type: str) -> RunConfig:
    """The run config with ``train.micro_batch_size`` and ``deepspeed.zero_stage`` as numbers for this world size
    and device (:func:`hyperscale.training.auto.resolve_auto`; a number given is checked against the world
    size). Rank 0 decides (the memory plan takes seconds) and every rank takes its answer; a resume keeps its
    checkpoint's stage under ``zero_stage=auto``. The result is what RUN/config.yaml and checkpoints record."""
    saved_stage = None
    if cfg.deepspeed.zero_stage == AUTO and saved is not None and saved.zero_stage is not None:
        saved_cfg = resume_from / "run_config.yaml"
        try:
            offload = bool(((yaml.safe_load(saved_cfg.read_text()) or {}).get("deepspeed") or {}).get("offload"))
        except (OSError, yaml.YAMLError):
            offload = False
        saved_stage = (int(saved.zero_stage), offload)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or world
    answer: Any = None
    if rank == 0:
        try:
            answer = resolve_auto(cfg, world, device_type, local_ranks, saved_stage=saved_stage)
        except ConfigError as e:
            answer = str(e)
    answer = hdist.all_gather_object(answer)[0]
    if isinstance(answer, str):
        raise ConfigError(answer)
    for note in answer.notes:
        hdist.log0(note)
    return answer.cfg


def check_fingerprint(cfg: RunConfig, ckpt_dir: Path, saved_fingerprint: str) -> None:
    fp = cfg.model_fingerprint()
    if not saved_fingerprint or saved_fingerprint == fp:
        return
    saved_cfg = ckpt_dir / "run_config.yaml"
    diffs = resume_differences(saved_cfg, cfg) if saved_cfg.is_file() else []
    what = "; ".join(diffs) if diffs else f"fingerprint {saved_fingerprint} != {fp}"
    raise ConfigError(
        f"cannot resume from {ckpt_dir}: its model/tasks configuration differs from this run's ({what}). "
        f"Tasks, method and sizes must match (compare with {saved_cfg}); start a new output_dir for a "
        "different configuration")


def check_sampler_config(cfg: RunConfig, resume_from: Path, saved: TrainState) -> None:
    """The global batch of every step is a function of the sampler's settings: a resume that changes them
    would not continue the run. Refused before any data is read (the task sizes are checked once it is)."""
    was = (saved.sampler or {}).get("config") or {}
    now = {"global_batch_size": cfg.train.global_batch_size, "seed": cfg.train.seed,
           "temperature": cfg.sampler.temperature, "mode": cfg.sampler.mode,
           "group_by_length": cfg.sampler.group_by_length}
    diffs = [f"{SAMPLER_SETTINGS[k]}: {was[k]!r} in the checkpoint, {v!r} now" for k, v in now.items()
             if k in was and was[k] != v]
    if diffs:
        raise ConfigError(f"cannot resume from {resume_from}: {'; '.join(diffs)}. The sampled batches "
                          "depend on these settings: resume with the checkpoint's values, or start a new output_dir")


def check_topology(cfg: RunConfig, resume_from: Path, saved: TrainState, world: int) -> bool:
    """ZeRO 1-3 partition the optimizer state over the ranks that wrote it. On another number of ranks the
    checkpoint is read through DeepSpeed's universal format (converted once, into RUN/universal/; returns True); a
    ZeRO-0 checkpoint holds the state whole and loads anywhere. Another ZeRO stage is refused (not verified)."""
    stage = cfg.deepspeed.zero_stage
    if saved.world_size is None or (saved.world_size, saved.zero_stage) == (world, stage):
        return False
    if saved.zero_stage != stage:
        raise ConfigError(
            f"cannot resume from {resume_from}: it was written under ZeRO-{saved.zero_stage}, this run uses "
            f"ZeRO-{stage}. Resume with deepspeed.zero_stage={saved.zero_stage} or auto (any number of ranks); to "
            "change the stage, `hyperscale export` the run and start a new one (the optimizer state is not kept)")
    if stage == 0:
        return False
    hdist.log0(f"{resume_from} was written by {saved.world_size} rank(s), this run has {world}: resuming "
               "through DeepSpeed's universal checkpoint format")
    return True


def check_sampler_state(sampler: MultiTaskSampler, resume_from: Path, saved: TrainState) -> None:
    """After the data is read: the checkpoint's sampler must fit this run's task sizes (``data.n_train``,
    ``data.train_subset_seed``, the data files), before the model and the engine are built."""
    try:
        sampler.load_state_dict(saved.sampler)
    except ValueError as e:
        raise ConfigError(f"cannot resume from {resume_from}: {e}; resume with the checkpoint's data "
                          "settings (data.n_train, data.train_subset_seed, data.data_dir), or start a new "
                          "output_dir") from None


def check_backbone(ckpt_dir: Path, saved_hash: Optional[str], model_hash: Optional[str]) -> None:
    """Before DeepSpeed loads: the checkpoint was trained on this backbone's weights."""
    if saved_hash and model_hash and saved_hash != model_hash:
        raise ConfigError(f"cannot resume from {ckpt_dir}: the backbone's weights differ from the ones it was "
                          "trained on (hash mismatch); load the original backbone")
