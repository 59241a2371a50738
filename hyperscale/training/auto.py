"""The run settings that resolve to numbers once the world size and the device are known: ``train.micro_batch_size:
auto`` and ``deepspeed.zero_stage: auto`` (what they become is described in :mod:`hyperscale.training.geometry`),
with the memory plan (:mod:`hyperscale.training.plan`) where a bound on memory is needed; and ``train.cpu_threads: 0``
(auto), the intra-op threads of a CPU rank (:func:`cpu_threads`)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import ConfigError
from . import plan as memory_plan
from .config import AUTO, RunConfig
from .geometry import CPU_MICRO_BATCH_CAP, BatchGeometry, batch_geometry, per_rank_batch

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
    if device_type == "cuda":
        memory = memory_plan.device_memory()
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
        budget = int(memory if memory is not None else device_memory_budget(device_type, local_ranks))
        try:
            plan = (make_plan or memory_plan.make_plan)(cfg, world, 1, budget)
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


# ------------------------------------------------------------------------------------------ CPU threads
AUTO_CPU_THREADS_MAX = 2  # measured: benchmarks/NOTES.md (CPU threads)


def cpu_threads(setting: int, world: int) -> int:
    """``train.cpu_threads`` as a number of intra-op threads per rank; 0 (auto): the cores other work leaves idle
    (by the 1-minute load average), shared by this machine's ranks, at most AUTO_CPU_THREADS_MAX. Thread pools that
    outnumber the idle cores are ten times slower (benchmarks/NOTES.md, CPU threads)."""
    if setting:
        return setting
    cores = len(os.sched_getaffinity(0))
    idle = max(1, cores - int(os.getloadavg()[0] + 0.5))
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or min(world, cores)
    return max(1, min(AUTO_CPU_THREADS_MAX, idle // max(1, local_ranks)))
