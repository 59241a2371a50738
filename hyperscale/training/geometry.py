"""Batch geometry on any number of ranks, and the run settings that resolve to numbers once it is known.

``train.global_batch_size = train.micro_batch_size x accumulation steps x world size``. The global batch is the
recipe's (it stays fixed across GPU counts); the world size is the launch's; the micro-batch is the one free
choice, and ``train.micro_batch_size: auto`` (the default, and every shipped config's value) makes it:

- the largest micro-batch that divides ``global_batch_size / world_size`` (so accumulation is a whole number),
- at most what fits: on CUDA, the memory plan's largest micro-batch for the run's ZeRO stage on this GPU
  (:func:`hyperscale.training.plan.make_plan`, seconds of fake-tensor steps, nothing allocated); on CPU, where a
  device memory bound is neither known nor needed for the sizes a CPU trains, at most :data:`CPU_MICRO_BATCH_CAP`.

``deepspeed.zero_stage: auto`` is the stage the memory plan recommends for this device's memory (CUDA: the GPU's
total memory; CPU: the host memory available now, shared by this node's ranks), with offload only where nothing
else fits and ``deepspeed.build_sharded`` only if the stage is 3. A resume keeps its checkpoint's stage (the
optimizer state is laid out by it).

A global batch that the world size does not divide is refused before anything is read or written, by the trainer,
``hyperscale slurm`` and ``hyperscale plan`` alike (:func:`per_rank_batch`). The trainer writes the resolved values
into ``RUN/config.yaml`` and the checkpoints' ``run_config.yaml``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import ConfigError
from .config import AUTO, RunConfig

# micro_batch_size=auto on CPU: at most this many examples per forward/backward (the activations of a t5-base
# micro-batch of 32 at 128 + 128 tokens are a few GiB; a CPU gains no throughput from larger ones)
CPU_MICRO_BATCH_CAP = 32


@dataclass(frozen=True)
class BatchGeometry:
    global_batch_size: int
    micro_batch_size: int
    world_size: int
    accumulation: int

    def __str__(self) -> str:
        return (f"global batch {self.global_batch_size} = micro-batch {self.micro_batch_size} x "
                f"{self.accumulation} accumulation step(s) x {self.world_size} rank(s)")


def largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def split_refusal(global_batch_size: int, world: int) -> str:
    """The one-line refusal of a global batch that ``world`` ranks cannot share evenly, with the fixes."""
    up = -(-global_batch_size // world) * world
    down = global_batch_size // world * world
    sizes = f"{down} or {up}" if down > 0 else f"{up}"
    divisors = [d for d in range(1, global_batch_size + 1) if global_batch_size % d == 0]
    near = [str(d) for d in (max((d for d in divisors if d < world), default=None),
                             min((d for d in divisors if d > world), default=None)) if d is not None]
    return (f"train.global_batch_size={global_batch_size} cannot be split evenly over {world} ranks: set "
            f"train.global_batch_size to a multiple of {world} (e.g. {sizes}), or run on a number of ranks that "
            f"divides {global_batch_size} (e.g. {' or '.join(near)})")


def per_rank_batch(global_batch_size: int, world: int) -> int:
    """Examples per rank per optimizer step; ConfigError (:func:`split_refusal`) where ``world`` does not divide."""
    if world < 1:
        raise ConfigError(f"the world size must be at least 1, got {world}")
    if global_batch_size % world:
        raise ConfigError(split_refusal(global_batch_size, world))
    return global_batch_size // world


def batch_geometry(cfg: RunConfig, world: int, cap: Optional[int] = None) -> BatchGeometry:
    """The batch geometry of ``cfg`` on ``world`` ranks. ``micro_batch_size=auto`` takes the largest divisor of
    the per-rank batch that is at most ``cap`` (default :data:`CPU_MICRO_BATCH_CAP`); a number must divide it."""
    g = cfg.train.global_batch_size
    per = per_rank_batch(g, world)
    mb = cfg.train.micro_batch_size
    if mb == AUTO:
        mb = largest_divisor(per, CPU_MICRO_BATCH_CAP if cap is None else cap)
    elif per % mb:
        raise ConfigError(
            f"train.global_batch_size={g} is not divisible by micro_batch_size x world size = {mb} x {world}: set "
            f"train.micro_batch_size=auto, or to a divisor of the {per} examples per rank "
            f"(e.g. train.micro_batch_size={largest_divisor(per, mb)})")
    return BatchGeometry(g, mb, world, per // mb)


# ------------------------------------------------------------------------------------------ memory
def host_available_memory() -> int:
    """Bytes of host memory available now (``MemAvailable``; free pages where /proc is not there)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_memory_budget(device_type: str, local_ranks: int = 1) -> int:
    """What one rank may plan with: a CUDA GPU's total memory; on CPU the available host memory shared by this
    node's ``local_ranks`` ranks."""
    from . import plan

    if device_type == "cuda":
        memory = plan.device_memory()
        if memory is not None:
            return memory
    return host_available_memory() // max(1, local_ranks)


# ----------------------------------------------------------------------------------------- resolve
@dataclass(frozen=True)
class Resolved:
    cfg: RunConfig  # micro_batch_size and zero_stage as numbers
    geometry: BatchGeometry
    notes: tuple  # one line per auto value: what it became and why


def _with(cfg: RunConfig, micro: int, stage: int, offload: bool, sharded: bool) -> RunConfig:
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, micro_batch_size=micro),
        deepspeed=dataclasses.replace(cfg.deepspeed, zero_stage=stage, offload=offload, build_sharded=sharded))


def resolve_auto(cfg: RunConfig, world: int, device_type: str, local_ranks: int = 1,
                 memory: Optional[int] = None, saved_stage: Optional[tuple[int, bool]] = None,
                 make_plan: Optional[Callable] = None) -> Resolved:
    """``cfg`` with ``train.micro_batch_size`` and ``deepspeed.zero_stage`` as numbers for ``world`` ranks on
    ``device_type`` (``cuda`` / ``cpu``). ``memory``: the bytes one rank may plan with (default
    :func:`device_memory_budget`); ``saved_stage``: (stage, offload) of the checkpoint a resume continues from,
    which ``zero_stage=auto`` keeps. Raises ConfigError for a global batch the ranks cannot share, and where the
    plan finds no stage that fits."""
    t, ds = cfg.train, cfg.deepspeed
    per = per_rank_batch(t.global_batch_size, world)  # refused before anything else
    micro_auto, stage_auto = t.micro_batch_size == AUTO, ds.zero_stage == AUTO
    notes: list[str] = []
    stage, offload, sharded = ds.zero_stage, ds.offload, ds.build_sharded
    plan = None
    wants_plan = (stage_auto and saved_stage is None) or (micro_auto and device_type == "cuda")
    if wants_plan:
        from .plan import make_plan as default_make_plan

        budget = int(memory if memory is not None else device_memory_budget(device_type, local_ranks))
        try:
            plan = (make_plan or default_make_plan)(cfg, world, 1, budget)
        except ConfigError as e:
            if stage_auto and saved_stage is None:  # the stage needs the plan
                raise
            # only the micro-batch wanted it (a backbone whose architecture is unknown offline, say): the CPU cap
            notes.append(f"warning: no memory plan for train.micro_batch_size=auto ({e}); taking at most "
                         f"{CPU_MICRO_BATCH_CAP} examples per micro-batch")
    if stage_auto:
        if saved_stage is not None:
            stage, offload = saved_stage
            why = "kept from the checkpoint this run resumes (its optimizer state is laid out by the stage)"
        else:
            rec = plan.recommended
            stage, offload = rec.zero_stage, rec.offload
            where = "this GPU" if device_type == "cuda" else f"host memory available to each of {local_ranks} rank(s)"
            why = f"by the memory plan for {plan.gpu_memory / 1024**3:.1f} GiB ({where}): {rec.reason}"
        if cfg.train.compile and stage == 3:
            raise ConfigError(f"deepspeed.zero_stage=auto chose ZeRO-3 {why}, but train.compile=true works with "
                              "ZeRO 0-2 only: set train.compile=false, or deepspeed.zero_stage=2 with a smaller "
                              "train.micro_batch_size")
        sharded = ds.build_sharded and stage == 3
        notes.append(f"deepspeed.zero_stage=auto -> {stage}" + (" with deepspeed.offload=true" if offload else "")
                     + f" {why}")
    cap, row = CPU_MICRO_BATCH_CAP, None
    if micro_auto and plan is not None and device_type == "cuda":  # the plan bounds a GPU's micro-batch
        row = next(s for s in plan.stages if (s.zero_stage, s.offload) == (stage, offload))
        cap = max(1, row.max_micro_batch)
        if row.max_micro_batch < 1:
            notes.append(f"warning: the memory plan fits not even micro-batch 1 under {row.name} on "
                         f"{plan.gpu_memory / 1024**3:.1f} GiB; trying micro-batch 1 (deepspeed.zero_stage=auto "
                         "picks a stage that fits)")
    geometry = batch_geometry(_with(cfg, t.micro_batch_size, stage, offload, sharded), world, cap)
    if micro_auto:
        bound = (f"the memory plan fits at most {row.max_micro_batch} under {row.name} on "
                 f"{plan.gpu_memory / 1024**3:.1f} GiB" if row is not None
                 else f"at most {CPU_MICRO_BATCH_CAP} {'on CPU' if device_type != 'cuda' else 'without a memory plan'}")
        notes.append(f"train.micro_batch_size=auto -> {geometry.micro_batch_size}: the largest divisor of the {per} "
                     f"examples per rank ({bound}); {geometry}")
    return Resolved(_with(cfg, geometry.micro_batch_size, stage, offload, sharded), geometry, tuple(notes))
