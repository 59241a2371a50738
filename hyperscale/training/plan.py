"""The memory plan: what each GPU needs under each ZeRO stage, whether it fits, and which stage to run.

For ZeRO stages 0, 1, 2, 3 and 3 with offload, per GPU (ranks = GPUs per node x nodes), in bytes:

- ``frozen``: the frozen backbone's weights in the run's precision; whole below ZeRO-3; under ZeRO-3 each rank's
  partition (``ceil(numel / ranks)`` per tensor) plus, on several ranks, whole copies of the tensors DeepSpeed keeps
  whole (at most ``stage3_param_persistence_threshold`` elements each) and of hyperscale's hypernetwork bank
  (:func:`hyperscale.training.engine._persist_bank`); with offload only those stay on the GPU;
- ``trainable``: the trainable weights as the engine holds them (ZeRO 1-2 flatten them into one buffer padded
  to a multiple of 2 x ranks elements; ZeRO-3 into partitions, plus whole copies of the persistent ones);
- ``master``: the fp32 copies the optimizer updates (ZeRO 1-3 keep one per rank's partition, in fp32 runs too;
  ZeRO-0 only in bf16/fp16 runs);
- ``gradients``: the most gradient storage the engine holds at any of these moments of a step: after backward,
  while it flattens a reduce bucket's gradients into a copy to reduce them (ZeRO 1-2), while it flattens its
  partition's gradients into the fp32 gradient it hands Adam, and inside Adam's step;
- ``optimizer``: Adam's two fp32 states per master element and its step counters;
- ``activations``: one micro-batch's forward and backward at ``data.max_source_length`` /
  ``max_target_length``, measured on fake tensors (:mod:`hyperscale.training.activations`), with gradient
  checkpointing as the run sets it;
- ``buffers``: DeepSpeed's working buffers from the run's DeepSpeed config: the reduce bucket (``reduce_bucket_size``
  elements, allocated whole however few the trainable parameters are; two with ``overlap_comm`` at ZeRO 1-2; none
  for bf16 ZeRO-1, whose BF16_Optimizer has none), the engine's flattened all-reduce copy of the gradients (ZeRO-0
  and bf16 ZeRO-1, at most 5e8 elements), and under ZeRO-3 on several ranks the gathered parameters alive at once,
  counted at their bound, ``stage3_max_live_parameters`` elements (which bounds the ``stage3_prefetch_bucket_size``
  prefetch too), or every partitioned parameter when there are fewer;
- ``allowance``: :data:`ALLOWANCE_BYTES` for the CUDA context and the caching allocator's fragmentation;
- ``total``.

The model states follow DeepSpeed 0.19.8's own partitioning and padding (``runtime/zero/stage_1_and_2.py``,
``stage3.py``, ``bf16_optimizer.py``, ``fp16/unfused_optimizer.py``): tests/training/test_plan.py checks them
against engines built on 1 and 2 ranks. They are counted from the run's real parameter set, built on the meta
device (no weights allocated), in ``model.parameters()`` order, which is the order DeepSpeed flattens them in.

The recommendation is the stage expected to be fastest among those that fit: a replicated frozen backbone (ZeRO
0-2) wherever it fits, because ZeRO-3 all-gathers the frozen weights in every forward and backward (measured on
an H200 for t5-base: 590 ms a step against 200-220 ms at ZeRO 0-2); ZeRO-3 only when they do not; offload only
when nothing else fits. ZeRO-0 comes first (its step measured fastest) except in bf16/fp16 runs that accumulate
gradients, where ZeRO-1 accumulates them in fp32 at no extra cost.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import ConfigError
from .activations import FakeStepper, build_model
from .config import AUTO, RunConfig
from .ds_config import build_ds_config
from .geometry import per_rank_batch

GiB = 1024**3
# CUDA context (0.5-1 GiB with torch 2.x and NCCL's buffers) and the caching allocator's fragmentation
ALLOWANCE_BYTES = 2 * GiB
STAGES = ((0, False), (1, False), (2, False), (3, False), (3, True))
CATEGORIES = ("frozen", "trainable", "master", "gradients", "optimizer", "activations", "buffers", "allowance",
              "total")
ELEMENT_SIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
ALLREDUCE_BUCKET = 500_000_000  # DeepSpeed's MEMORY_OPT_ALLREDUCE_SIZE: elements per flattened all-reduce
MAX_RANKS_EXACT = 64  # above this many ranks, the ranks that can differ are sampled


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as DeepSpeed sees it: its size, whether it trains, whether hyperscale keeps it whole."""

    numel: int
    trainable: bool
    bank: bool  # the hypernetwork / adapter bank: whole on every rank under ZeRO-3


@dataclass(frozen=True)
class ZeroSettings:
    """What the memory of a stage depends on, read from a built DeepSpeed config (defaults DeepSpeed's own)."""

    stage: int
    element_size: int  # of the module's weights: 4 fp32, 2 bf16/fp16
    accumulation_size: int  # of gradient accumulation (data_types.grad_accum_dtype)
    offload_param: bool
    offload_optimizer: bool
    reduce_bucket_size: int
    overlap_comm: bool
    contiguous_gradients: bool
    persistence_threshold: int
    model_persistence_threshold: int
    max_live_parameters: int
    prefetch_bucket_size: int
    sub_group_size: int

    @property
    def bf16_optimizer(self) -> bool:
        """DeepSpeed's BF16_Optimizer: ZeRO-1, bf16 weights, fp32 accumulation, no offload."""
        return self.stage == 1 and self.element_size == 2 and self.accumulation_size == 4 and not self.offload_optimizer


def zero_settings(ds: dict) -> ZeroSettings:
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # heavy: only where a plan is made

    z = DeepSpeedZeroConfig(**dict(ds.get("zero_optimization", {})))
    e = 2 if ds.get("bf16", {}).get("enabled") or ds.get("fp16", {}).get("enabled") else 4
    acc_name = str(ds.get("data_types", {}).get("grad_accum_dtype", "") or "")
    acc = {"fp32": 4, "float32": 4, "float": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}.get(acc_name, e)

    def offloaded(section: Any) -> bool:
        device = str(getattr(section, "device", "none")).split(".")[-1].lower()
        return section is not None and device not in ("none", "")

    stage = int(z.stage)
    return ZeroSettings(stage=stage, element_size=e, accumulation_size=acc,
                        offload_param=stage == 3 and offloaded(z.offload_param),
                        offload_optimizer=offloaded(z.offload_optimizer),
                        reduce_bucket_size=int(z.reduce_bucket_size), overlap_comm=bool(z.overlap_comm),
                        contiguous_gradients=bool(z.contiguous_gradients),
                        persistence_threshold=int(z.param_persistence_threshold),
                        model_persistence_threshold=int(z.model_persistence_threshold),
                        max_live_parameters=int(z.max_live_parameters),
                        prefetch_bucket_size=int(z.prefetch_bucket_size), sub_group_size=int(z.sub_group_size))


def parameter_specs(model: torch.nn.Module) -> tuple[ParamSpec, ...]:
    """``model.parameters()`` in order (tied weights once), as :func:`model_states` counts them."""
    bank = getattr(model, "bank", None)
    bank_ids = {id(p) for p in bank.parameters()} if bank is not None else set()
    return tuple(ParamSpec(int(p.numel()), bool(p.requires_grad), id(p) in bank_ids) for p in model.parameters())


# ------------------------------------------------------------------------------------------ model states
def _persistent(params: tuple[ParamSpec, ...], z: ZeroSettings) -> list[bool]:
    """Which parameters ZeRO-3 keeps whole: DeepSpeed's ``mark_persistent_parameters`` (at most the threshold's
    elements each, in order, until the model threshold) plus the bank (``_persist_bank``)."""
    out, total = [], 0
    for p in params:
        small = p.numel <= z.persistence_threshold and p.numel + total <= z.model_persistence_threshold
        if small:
            total += p.numel
        out.append(small or p.bank)
    return out


def _sub_groups(partitions: list[int], size: int) -> int:
    """ZeRO-3's optimizer sub-groups (``_create_fp16_sub_groups``): one Adam step counter each."""
    if not partitions or size >= sum(partitions):
        return 1
    groups, current = 0, 0
    for i, n in enumerate(partitions):
        current += n
        if current >= size or i == len(partitions) - 1:
            groups, current = groups + 1, 0
    return groups


def model_states(params: tuple[ParamSpec, ...], z: ZeroSettings, world: int, rank: int = 0) -> dict[str, int]:
    """Bytes of frozen weights, trainable weights, master copies, gradients and optimizer states that rank ``rank``
    of ``world`` holds (the formulas mirror DeepSpeed 0.19.8; see the module docstring)."""
    e, acc, W = z.element_size, z.accumulation_size, int(world)
    frozen = [p.numel for p in params if not p.trainable]
    train = [p.numel for p in params if p.trainable]
    N, T = sum(train), len(train)
    if z.stage == 0:
        out = {"frozen": sum(frozen) * e, "trainable": N * e, "optimizer": 8 * N + 4 * T}
        if e == 4:  # the torch optimizer steps the module's own fp32 weights
            out.update(master=0, gradients=4 * N)
        else:  # FP16_UnfusedOptimizer: fp32 copies; the step turns the bf16 gradients into fp32 ones, all at once
            out.update(master=4 * N, gradients=e * N + 4 * N)
        return out
    if z.stage in (1, 2):
        F = math.ceil(N / (2 * W)) * 2 * W  # the flat buffer, padded to nccl_start_alignment_factor x ranks
        P = F // W
        out = {"frozen": sum(frozen) * e, "trainable": F * e, "master": 4 * P, "optimizer": 8 * P + 4}
        # reducing a bucket flattens its gradients (at most reduce_bucket_size elements) into a copy
        copy = min(N, z.reduce_bucket_size) * e
        if z.bf16_optimizer:  # fp32 gradients of the whole flat buffer, plus the bf16 ones until the step
            out["gradients"] = 4 * F + e * N
        elif acc == 4 and e != 4:  # one fp32 partition the reduced buckets are added into
            out["gradients"] = 4 * P + copy
        else:  # grads_in_partition (every parameter the partition touches, whole), padding, the flat copy
            start, end = rank * P, (rank + 1) * P
            touched, offset = 0, 0
            for n in train:
                if start <= offset < end or offset < start < offset + n:
                    touched += n
                offset += n
            pad = P - max(0, min(N, end) - start)
            at_step = touched * e + pad * acc + P * acc + (4 * P if acc != 4 else 0)
            # while reducing: the copy, and grads_in_partition once an earlier bucket has filled it
            reducing = copy + (touched * e if N > z.reduce_bucket_size else 0)
            out["gradients"] = max(at_step, reducing)
        return out
    persistent = _persistent(params, z)
    frozen_b = trainable_b = 0
    parts: list[int] = []
    for p, whole in zip(params, persistent):
        part = math.ceil(p.numel / W)
        on_gpu = part * e if (whole or not z.offload_param) else 0  # persistent partitions stay on the device
        size = on_gpu + (p.numel * e if whole and W > 1 else 0)  # one rank: the partition is the whole tensor
        if p.trainable:
            trainable_b += size
            parts.append(part)
        else:
            frozen_b += size
    S = sum(parts)
    if z.offload_optimizer:  # fp32 partitions, their gradients and Adam live in host memory
        return {"frozen": frozen_b, "trainable": trainable_b, "master": 0, "gradients": 0, "optimizer": 0}
    return {"frozen": frozen_b, "trainable": trainable_b, "master": 4 * S,
            # the flat gradient partitions, and the fp32 copy the step flattens them into
            "gradients": acc * S + 4 * S,
            "optimizer": 8 * S + 4 * _sub_groups(parts, z.sub_group_size)}


def buffer_parts(params: tuple[ParamSpec, ...], z: ZeroSettings, world: int) -> dict[str, int]:
    """Bytes of DeepSpeed's working buffers on a rank, by kind (see the module docstring)."""
    e, W = z.element_size, int(world)
    N = sum(p.numel for p in params if p.trainable)
    parts = {"reduce_bucket": 0, "allreduce_copy": 0, "live_parameters": 0}
    if z.stage == 0 or z.bf16_optimizer:  # the engine flattens the gradients to all-reduce them (one rank too)
        parts["allreduce_copy"] = min(N, ALLREDUCE_BUCKET) * (4 if z.bf16_optimizer else e)
    elif z.contiguous_gradients:  # allocated whole, however few elements the trainable parameters have
        parts["reduce_bucket"] = z.reduce_bucket_size * e * (2 if z.overlap_comm and z.stage < 3 else 1)
    if z.stage == 3 and W > 1:  # gathered into fresh full tensors (one rank uses its partition as it is)
        persistent = _persistent(params, z)
        gathered = sum(p.numel for p, whole in zip(params, persistent) if not whole)
        parts["live_parameters"] = min(z.max_live_parameters, gathered) * e
    return parts


def deepspeed_buffers(params: tuple[ParamSpec, ...], z: ZeroSettings, world: int) -> int:
    """Bytes of DeepSpeed's working buffers on a rank (:func:`buffer_parts`, summed)."""
    return sum(buffer_parts(params, z, world).values())


def _ranks(world: int) -> list[int]:
    if world <= MAX_RANKS_EXACT:
        return list(range(world))
    return sorted({0, 1, world // 2, world - 2, world - 1})


def rank_states(params: tuple[ParamSpec, ...], z: ZeroSettings, world: int) -> dict[str, int]:
    """The model states of the rank that needs the most (ranks differ by padding and by where partitions cut)."""
    return max((model_states(params, z, world, r) for r in _ranks(world)), key=lambda s: sum(s.values()))


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class StagePlan:
    zero_stage: int
    offload: bool
    per_gpu_bytes: dict  # CATEGORIES -> bytes, at the configured micro-batch
    fits: bool
    max_micro_batch: int  # the largest usable micro-batch that fits (0: not even one example)

    @property
    def name(self) -> str:
        return f"ZeRO-{self.zero_stage}" + (" + offload" if self.offload else "")


@dataclass(frozen=True)
class Recommendation:
    zero_stage: int
    offload: bool
    micro_batch_size: int
    reason: str


@dataclass(frozen=True)
class Plan:
    stages: tuple
    recommended: Recommendation
    gpu_memory: int
    gpus_per_node: int
    nodes: int
    micro_batch_size: int
    gradient_checkpointing: bool
    activations_other: int  # activations at the configured micro-batch with checkpointing the other way round
    parameters: dict  # {"frozen": n, "trainable": n}

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes

    def to_json(self) -> dict:
        return {"stages": [{"zero_stage": s.zero_stage, "offload": s.offload,
                            "per_gpu_bytes": {k: int(s.per_gpu_bytes[k]) for k in CATEGORIES},
                            "fits": bool(s.fits), "max_micro_batch": int(s.max_micro_batch)} for s in self.stages],
                "recommended": dataclasses.asdict(self.recommended)}


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_memory(text: str) -> int:
    """``80GiB``, ``80 GB`` (decimal), ``81920MiB``, ``85899345920``: bytes. Raises ConfigError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"--gpu-memory {text!r} is not a memory size; write e.g. 80GiB, 40GB or 81920MiB")
    return int(float(m.group(1)) * _UNITS[unit])


def device_memory() -> Optional[int]:
    """Total memory of this machine's first GPU, or None without one."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return None


def _stage_config(cfg: RunConfig, stage: int, offload: bool, world: int, mb: int) -> dict:
    """The DeepSpeed config the trainer would build for ``stage`` (the batch sizes only have to be consistent)."""
    variant = cfg.with_overrides([f"deepspeed.zero_stage={stage}", f"deepspeed.offload={str(offload).lower()}",
                                  f"deepspeed.build_sharded={str(cfg.deepspeed.build_sharded and stage == 3).lower()}",
                                  "train.compile=false", f"train.global_batch_size={mb * world}",
                                  f"train.micro_batch_size={mb}"])
    return build_ds_config(variant, world)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _divisors_up_to(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (0 when cap < 1)."""
    return max((d for d in range(1, min(n, cap) + 1) if n % d == 0), default=0)


class _Activations:
    """Activation bytes by micro-batch for one checkpointing setting, measured (a fake step each, cached). The
    search for the largest micro-batch that fits measures the cap first; only when that does not fit does it
    estimate from an affine fit through two measurements (every activation has the batch dimension) and step down
    until a measurement fits."""

    def __init__(self, stepper: FakeStepper, checkpointing: bool) -> None:
        self.stepper, self.checkpointing = stepper, checkpointing

    def __call__(self, batch_size: int) -> int:
        return self.stepper.peak(batch_size, self.checkpointing)

    def largest(self, budget: int, cap: int) -> int:
        """The largest batch size <= cap whose measured activations fit ``budget`` (0 if none)."""
        if cap < 1 or budget <= 0:
            return 0
        if self(cap) <= budget:
            return cap
        if cap == 1:
            return 0
        low = max(1, cap // 2)
        slope = max(1.0, (self(cap) - self(low)) / (cap - low))
        b = min(cap - 1, int((budget - (self(low) - slope * low)) // slope))
        while b >= 1 and self(b) > budget:  # the estimate was short: step down by what it missed
            b -= max(1, math.ceil((self(b) - budget) / slope))
        return max(0, b)


def make_plan(cfg: RunConfig, gpus_per_node: int, nodes: int = 1, gpu_memory: Optional[int] = None,
              stepper: Optional[FakeStepper] = None) -> Plan:
    """The plan for ``cfg`` on ``gpus_per_node`` x ``nodes`` GPUs of ``gpu_memory`` bytes (default: this machine's
    GPU, else 80 GiB). Raises ConfigError when no stage fits even one example per GPU, saying what would.
    ``train.micro_batch_size=auto`` is planned at the whole per-GPU batch (no accumulation); ``deepspeed.zero_stage``
    does not matter (every stage is planned)."""
    if gpus_per_node < 1 or nodes < 1:
        raise ConfigError(f"--gpus-per-node and --nodes must be at least 1, got {gpus_per_node} and {nodes}")
    world = gpus_per_node * nodes
    memory = int(gpu_memory if gpu_memory is not None else (device_memory() or 80 * GiB))
    t = cfg.train
    per_rank = per_rank_batch(t.global_batch_size, world)
    micro = per_rank if t.micro_batch_size == AUTO else t.micro_batch_size
    model = build_model(cfg, torch.float32, torch.device("meta"))
    params = parameter_specs(model)
    del model
    stepper = stepper or FakeStepper(cfg)
    ckpt = cfg.model.gradient_checkpointing
    acts = _Activations(stepper, ckpt)
    activations = acts(micro)
    rows, fixed_bytes = [], {}
    for stage, offload in STAGES:
        z = zero_settings(_stage_config(cfg, stage, offload, world, micro))
        states = rank_states(params, z, world)
        fixed = sum(states.values()) + deepspeed_buffers(params, z, world) + ALLOWANCE_BYTES
        per = {**states, "activations": activations, "buffers": deepspeed_buffers(params, z, world),
               "allowance": ALLOWANCE_BYTES}
        per["total"] = sum(per[k] for k in CATEGORIES[:-1])
        usable = _divisors_up_to(per_rank, acts.largest(memory - fixed, per_rank))
        fixed_bytes[(stage, offload)] = fixed
        rows.append(StagePlan(stage, offload, per, per["total"] <= memory, usable))
    other = stepper.peak(micro, not ckpt)
    n_frozen = sum(p.numel for p in params if not p.trainable)
    n_train = sum(p.numel for p in params if p.trainable)

    def need_at_one(key: tuple) -> int:  # a stage's total at micro-batch 1 (measured only when a message needs it)
        return fixed_bytes[key] + acts(1)

    recommended = _recommend(cfg, rows, world, per_rank, memory, need_at_one, params, stepper)
    return Plan(stages=tuple(rows), recommended=recommended, gpu_memory=memory, gpus_per_node=gpus_per_node,
                nodes=nodes, micro_batch_size=micro, gradient_checkpointing=ckpt, activations_other=other,
                parameters={"frozen": n_frozen, "trainable": n_train})


def _order(cfg: RunConfig, rows: list, per_rank_batch: int) -> list:
    """The stages in the order they are expected to run fastest."""
    zero0 = rows[0]
    low_precision = cfg.train.precision != "fp32"
    accumulates = zero0.max_micro_batch and per_rank_batch // zero0.max_micro_batch > 1
    order = list(rows)
    if low_precision and accumulates:  # ZeRO-1 accumulates in fp32 at the same speed
        order[0], order[1] = order[1], order[0]
    return order


def _recommend(cfg: RunConfig, rows: list, world: int, per_rank_batch: int, memory: int, need_at_one: Any,
               params: tuple, stepper: FakeStepper) -> Recommendation:
    order = _order(cfg, rows, per_rank_batch)
    chosen = next((r for r in order if r.max_micro_batch >= 1), None)
    if chosen is None:
        raise ConfigError(_fits_nowhere(cfg, world, memory, {key: need_at_one(key) for key in STAGES}, params,
                                        stepper))
    mb = chosen.max_micro_batch
    accum = per_rank_batch // mb
    per = chosen.per_gpu_bytes
    used = per["total"] - per["activations"] + stepper.peak(mb, cfg.model.gradient_checkpointing)
    where = f"{_gib(used)} of {_gib(memory)} per GPU at micro-batch {mb}" + (
        f" x {accum} accumulation steps" if accum > 1 else "")
    frozen_total = sum(p.numel for p in params if not p.trainable) * ELEMENT_SIZE[cfg.train.precision]
    if chosen.zero_stage < 3:
        why_not_0 = (" (ahead of ZeRO-0, whose bf16/fp16 gradients would accumulate in low precision)"
                     if chosen.zero_stage == 1 and order[0] is chosen and rows[0].max_micro_batch else "")
        what = "the frozen backbone" if frozen_total else "the model"
        reason = (f"ZeRO-{chosen.zero_stage}{why_not_0}: {what} fits replicated ({where}); ZeRO-3 would all-gather "
                  f"its {_gib(frozen_total or _weights(params, cfg))} in every forward and backward")
    elif not chosen.offload:
        replicated = min(need_at_one((s, False)) for s in (0, 1, 2))
        reason = (f"ZeRO-3: a replicated backbone does not fit (ZeRO 0-2 need at least {_gib(replicated)} per GPU "
                  f"at micro-batch 1); sharded over {world} GPUs it needs {where}")
    else:
        sharded = need_at_one((3, False))
        reason = (f"ZeRO-3 with offload: nothing else fits (ZeRO-3 needs {_gib(sharded)} per GPU at micro-batch 1); "
                  f"parameters and optimizer states live in host memory ({where}), which is slow")
    if cfg.train.compile and chosen.zero_stage == 3:
        reason += "; train.compile=true works with ZeRO 0-2 only, so set train.compile=false"
    if cfg.train.micro_batch_size == AUTO:
        pass  # the plan's micro-batch is the one an auto micro-batch takes
    elif cfg.train.micro_batch_size > per_rank_batch:
        reason += (f"; train.global_batch_size / GPUs = {per_rank_batch} examples per GPU caps the configured "
                   f"train.micro_batch_size={cfg.train.micro_batch_size}")
    elif mb < cfg.train.micro_batch_size:
        reason += f"; the configured train.micro_batch_size={cfg.train.micro_batch_size} does not fit"
    return Recommendation(chosen.zero_stage, chosen.offload, mb, reason)


def _weights(params: tuple, cfg: RunConfig) -> int:
    return sum(p.numel for p in params) * ELEMENT_SIZE[cfg.train.precision]


def _fits_nowhere(cfg: RunConfig, world: int, memory: int, needs_at_one: dict, params: tuple,
                  stepper: FakeStepper) -> str:
    least = min(needs_at_one.values())
    fixes = []
    ckpt = cfg.model.gradient_checkpointing
    if not ckpt:
        saved = stepper.peak(1, False) - stepper.peak(1, True)
        if least - saved <= memory:
            fixes.append("model.gradient_checkpointing=true")
    for more in (2, 4, 8, 16, 32, 64, 128, 256):
        ranks = world * more
        if cfg.train.global_batch_size % ranks:
            continue
        z3 = zero_settings(_stage_config(cfg, 3, False, ranks, 1))
        need = (sum(rank_states(params, z3, ranks).values()) + deepspeed_buffers(params, z3, ranks) + ALLOWANCE_BYTES
                + stepper.peak(1, ckpt))
        if need <= memory:
            fixes.append(f"{ranks} GPUs (--gpus-per-node x --nodes)")
            break
    fixes.append(f"GPUs with at least {_gib(least)}")
    return (f"{cfg.model.backbone} fits no ZeRO stage on {world} GPU(s) of {_gib(memory)}, not even at micro-batch 1 "
            f"with offload (it needs at least {_gib(least)} per GPU); it would fit with " + " or ".join(fixes))


def format_plan(plan: Plan, backbone: str, precision: str) -> str:
    head = (f"memory plan: {backbone}, {precision}, {plan.parameters['frozen']:,} frozen + "
            f"{plan.parameters['trainable']:,} trainable parameters; {plan.world} GPU(s) "
            f"({plan.gpus_per_node} per node x {plan.nodes}) of {_gib(plan.gpu_memory)}; micro-batch "
            f"{plan.micro_batch_size}, gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}")
    cols = ["stage"] + [c for c in CATEGORIES] + ["fits", "max micro-batch"]
    table = [cols]
    for s in plan.stages:
        table.append([s.name] + [f"{s.per_gpu_bytes[c] / GiB:.2f}" for c in CATEGORIES]
                     + ["yes" if s.fits else "no", str(s.max_micro_batch)])
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    lines = [head, "", "per GPU, GiB:"]
    for i, r in enumerate(table):
        lines.append("  ".join(v.ljust(widths[j]) if j == 0 else v.rjust(widths[j]) for j, v in enumerate(r)))
        if i == 0:
            lines.append("-" * (sum(widths) + 2 * (len(cols) - 1)))
    act = plan.stages[0].per_gpu_bytes["activations"]
    lines += ["", f"activations of one micro-batch of {plan.micro_batch_size}: {_gib(act)} with checkpointing "
                  f"{'on' if plan.gradient_checkpointing else 'off'}, {_gib(plan.activations_other)} with it "
                  f"{'off' if plan.gradient_checkpointing else 'on'} (measured on fake tensors); allowance "
                  f"{_gib(ALLOWANCE_BYTES)} for the CUDA context and the allocator",
              f"recommended: {plan.recommended.reason}",
              f"  deepspeed.zero_stage={plan.recommended.zero_stage}"
              + (" deepspeed.offload=true" if plan.recommended.offload else "")
              + f" train.micro_batch_size={plan.recommended.micro_batch_size}"]
    return "\n".join(lines)
