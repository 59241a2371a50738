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

from dataclasses import dataclass
from typing import Optional

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
