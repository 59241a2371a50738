#!/usr/bin/env python3
"""The memory plan against a real engine (issue 19): ``hyperscale plan``'s per-GPU peak next to what the trainer's
engine allocates, for one or more ZeRO stages, on one device::

    python benchmarks/plan_check.py [CONFIG] [key.sub=value ...] [--device cuda] [--stages 2 3] [--batch 64]
                                    [--steps 3] [--tolerance 0.15] [--out DIR]

For each stage (in ascending order, in one process): the run config (``CONFIG`` and overrides, then
``deepspeed.zero_stage``, ``train.global_batch_size = train.micro_batch_size = --batch`` on one GPU, no offload, no
sharded build, no compile) is planned once by :func:`hyperscale.training.plan.make_plan`; then the run's model is
built (:func:`hyperscale.training.activations.build_model`: the architecture, tasks, dropout and gradient
checkpointing the plan counts, random weights of ``model.init_seed``, fp32 as the trainer loads a preset) and handed
to the trainer's one engine builder (:func:`hyperscale.training.engine.build_engine`, the DeepSpeed config of
:func:`hyperscale.training.ds_config.build_ds_config`); the peak statistics are reset and ``--steps`` training steps
run (the trainer's :func:`~hyperscale.training.engine.forward_loss` on a full-length batch, ``engine.backward``,
``engine.step``); ``engine.destroy()`` after.

Measured, per stage, relative to what was allocated before the stage began:

- ``peak``: the most allocated during the steps (CUDA: ``torch.cuda.max_memory_allocated()``), against the plan's
  per-GPU total less its allowance (``plan.ALLOWANCE_BYTES``, which stands for the CUDA context and the caching
  allocator's reserved-but-free memory: neither is an allocated tensor, so ``max_memory_allocated`` never sees
  them). This is the check: PASS when ``|plan - measured| <= tolerance x measured``.
- ``after_build`` and ``between_steps`` (informational): allocated once the engine is built (the build's fp32
  module, cast by DeepSpeed, is gone by then) and after the last step (activations freed), each against two of the
  plan's sums: the weights, fp32 masters and Adam states every stage keeps (``planned_kept``; ZeRO 1-2 hold just
  these between steps, their optimizer states appear at the first step), and those with the gradients and
  buffers (``planned_all_held``; ZeRO-3 keeps its reduce bucket and gradient partitions, allocated at build);
- ``step_peaks`` (CUDA): the peak of each step; the peak reserved by the caching allocator and the device memory
  in use outside it (the CUDA context), against the allowance (informational);
- ``activations`` (informational, once): one step of the plain model in the run's precision on the device's
  kernels under the tracker the plan runs on fake tensors, against the plan's activations.

Output: one line per stage on stdout, of the form ``PASS ZeRO-2: plan 8.56 GiB, measured 8.31 GiB, plan/measured
1.03 (within 15 %)`` or ``FAIL ...`` saying by how much the plan over- or understates the peak;
``--out DIR/plan-check.json`` (settings, environment, and per stage the plan's categories, the measurements, the
ratio and the verdict). Exit 0
only when every stage is within the tolerance, 1 otherwise, 2 on bad input (one ``hyperscale: error:`` line).

Without CUDA (``--device cpu``: the dry run of ``benchmarks/gpu_accept.sh``, a tiny backbone) the same steps are
measured by the CPU allocator's own accounting: the whole stage runs under ``torch.profiler`` with memory profiling,
and allocated bytes at any moment are the sum of its allocation and free events (the accounting
tests/training/test_plan.py checks the activation tracker against).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hyperscale.bench.runtime import ensure_single_process_dist  # noqa: E402
from hyperscale.errors import ArgumentParser, ConfigError, leave_process_group, run_main  # noqa: E402
from hyperscale.training.activations import (  # noqa: E402
    DTYPES,
    LiveStorageTracker,
    build_model,
    cache_settings,
    make_batch,
    set_checkpointing,
    step_peak,
)
from hyperscale.training.config import RunConfig, load_config, split_config_arg  # noqa: E402
from hyperscale.training.ds_config import build_ds_config  # noqa: E402
from hyperscale.training.engine import build_engine, forward_loss  # noqa: E402
from hyperscale.training.plan import ALLOWANCE_BYTES, GiB, Plan, StagePlan, make_plan  # noqa: E402

TOLERANCE = 0.15
JSON_NAME = "plan-check.json"
KEPT = ("frozen", "trainable", "master", "optimizer")  # held by every stage between steps
ALL_HELD = ("frozen", "trainable", "master", "gradients", "optimizer", "buffers")  # the most it can hold then
_TORCH_LINEAR = torch.nn.functional.linear
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")


# ------------------------------------------------------------------------------------------------ the verdict
def planned_peak(per_gpu_bytes: dict) -> int:
    """What the plan says ``max_memory_allocated`` reaches: its total less the allowance (not tensors)."""
    return int(per_gpu_bytes["total"] - per_gpu_bytes["allowance"])


@dataclass(frozen=True)
class Verdict:
    """The plan's peak against a measured one, for one stage."""

    stage: str  # "ZeRO-2"
    planned: int  # bytes
    measured: int  # bytes
    tolerance: float = TOLERANCE

    @property
    def ratio(self) -> float:
        """plan / measured (infinite when nothing was measured)."""
        return self.planned / self.measured if self.measured > 0 else math.inf

    @property
    def ok(self) -> bool:
        return self.measured > 0 and abs(self.planned - self.measured) <= self.tolerance * self.measured

    def line(self) -> str:
        head = (f"{self.stage}: plan {self.planned / GiB:.2f} GiB, measured {self.measured / GiB:.2f} GiB, "
                f"plan/measured {self.ratio:.2f}")
        pct = f"{self.tolerance * 100:g} %"
        if self.ok:
            return f"PASS {head} (within {pct})"
        if self.measured <= 0:
            return f"FAIL {head}: nothing was measured (tolerance {pct})"
        off = abs(self.ratio - 1) * 100
        way = "overstates" if self.planned > self.measured else "understates"
        return f"FAIL {head}: the plan {way} the peak by {off:.0f} % (tolerance {pct})"


# ------------------------------------------------------------------------------------------------ meters
@dataclass
class Measured:
    after_build: int = 0
    peak: int = 0
    after_steps: int = 0
    step_peaks: Optional[list] = None  # CUDA: the peak of each step
    extra: Optional[dict] = None  # device-specific readings


class CudaMeter:
    """``torch.cuda``'s allocator statistics, relative to what was allocated before the stage."""

    def __init__(self) -> None:
        self.result = Measured(step_peaks=[], extra={})
        self.base = 0

    @contextlib.contextmanager
    def stage(self) -> Iterator[None]:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        self.base = torch.cuda.memory_allocated()
        yield

    @contextlib.contextmanager
    def build(self) -> Iterator[None]:
        yield
        torch.cuda.synchronize()
        self.result.after_build = torch.cuda.memory_allocated() - self.base

    @contextlib.contextmanager
    def steps(self) -> Iterator[None]:
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        reserved = torch.cuda.memory_reserved()
        stats = torch.cuda.memory_stats()
        self.result.peak = max(self.result.step_peaks)
        self.result.after_steps = torch.cuda.memory_allocated() - self.base
        self.result.extra = {"max_memory_reserved": int(torch.cuda.max_memory_reserved()),
                             "outside_allocator": int(total - free - reserved),
                             "alloc_retries": int(stats.get("num_alloc_retries", 0)),
                             "ooms": int(stats.get("num_ooms", 0))}

    def step_done(self) -> None:
        torch.cuda.synchronize()
        self.result.step_peaks.append(int(torch.cuda.max_memory_allocated() - self.base))
        torch.cuda.reset_peak_memory_stats()


class CpuMeter:
    """The CPU allocator's accounting: every allocation and free of the stage from ``torch.profiler``'s memory
    events, summed in time order; the build and the steps are found by their ``record_function`` markers."""

    BUILD, STEPS = "plan_check:build", "plan_check:steps"

    def __init__(self) -> None:
        self.result = Measured()
        self._marks: dict[str, Any] = {}

    @contextlib.contextmanager
    def stage(self) -> Iterator[None]:
        from torch.profiler import ProfilerActivity, profile

        gc.collect()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            yield
        self._read(prof.profiler.kineto_results.events())

    @contextlib.contextmanager
    def build(self) -> Iterator[None]:
        with torch.profiler.record_function(self.BUILD):
            yield

    @contextlib.contextmanager
    def steps(self) -> Iterator[None]:
        with torch.profiler.record_function(self.STEPS):
            yield

    def step_done(self) -> None:
        pass

    def _read(self, events: list) -> None:
        spans = {e.name(): (e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
                 if e.name() in (self.BUILD, self.STEPS)}
        if set(spans) != {self.BUILD, self.STEPS}:
            raise RuntimeError(f"the profiler recorded the markers {sorted(spans)}, not the build and the steps")
        memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        (b0, b1), (s0, s1) = spans[self.BUILD], spans[self.STEPS]
        live = base = after_build = peak = after_steps = 0
        for t, n in memory:
            if t < b0:
                live += n
                base = live
                continue
            if t > s1:
                break
            live += n
            if t <= b1:
                after_build = live - base
            if s0 <= t <= s1:
                peak = max(peak, live - base)
            after_steps = live - base
        self.result = Measured(after_build=after_build, peak=peak, after_steps=after_steps)


# ------------------------------------------------------------------------------------------------ one stage
def stage_config(cfg: RunConfig, stage: int) -> RunConfig:
    """The run at ``stage`` as the plan plans it on one GPU (no offload, no sharded build, no compile)."""
    return cfg.with_overrides([f"deepspeed.zero_stage={stage}", "deepspeed.offload=false",
                               "deepspeed.build_sharded=false", "train.compile=false"])


def measure_stage(cfg: RunConfig, device: torch.device, steps: int, meter: Any) -> Measured:
    """Build ``cfg``'s engine on ``device`` through the trainer's builder and run ``steps`` steps under ``meter``."""
    ds = build_ds_config(cfg, 1)
    d = cfg.data
    batch = {k: v.to(device) for k, v in
             make_batch(cfg.train.micro_batch_size, d.max_source_length, d.max_target_length).items()}
    n_tasks = len(cfg.data.tasks)
    task: Any = 0 if cfg.sampler.mode == "same-task" else [i % n_tasks for i in range(cfg.train.micro_batch_size)]
    engine = None
    try:
        with meter.stage():
            with meter.build():
                torch.manual_seed(cfg.model.init_seed)
                model = build_model(cfg, torch.float32, device)
                set_checkpointing(model, cfg.model.gradient_checkpointing, cache_settings(model))
                engine = build_engine(model, ds, device)
                del model
                engine.train()
            with meter.steps():
                for _ in range(steps):
                    loss, _ = forward_loss(engine, batch, task)
                    engine.backward(loss)
                    engine.step()
                    del loss
                    meter.step_done()
        return meter.result
    finally:
        if engine is not None:
            engine.destroy()
        del engine
        torch.nn.functional.linear = _TORCH_LINEAR  # ZeRO-3 patches it for the rest of the process
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def measure_activations(cfg: RunConfig, device: torch.device) -> int:
    """The activation peak of one step of the plain model in the run's precision on ``device`` (its real kernels),
    under the tracker the plan runs on fake tensors (:func:`hyperscale.training.activations.step_peak`)."""
    d = cfg.data
    batch = {k: v.to(device) for k, v in
             make_batch(cfg.train.micro_batch_size, d.max_source_length, d.max_target_length).items()}
    n_tasks = len(cfg.data.tasks)
    task: Any = 0 if cfg.sampler.mode == "same-task" else [i % n_tasks for i in range(cfg.train.micro_batch_size)]
    torch.manual_seed(cfg.model.init_seed)
    model = build_model(cfg, DTYPES[cfg.train.precision], device)
    try:
        set_checkpointing(model, cfg.model.gradient_checkpointing, cache_settings(model))
        return int(step_peak(model, batch, task, LiveStorageTracker()))
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _row(plan: Plan, stage: int) -> StagePlan:
    return next(s for s in plan.stages if s.zero_stage == stage and not s.offload)


def _sum(per: dict, keys: tuple) -> int:
    return int(sum(per[k] for k in keys))


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def stage_report(row: StagePlan, measured: Measured, tolerance: float) -> tuple[Verdict, dict]:
    """The verdict on one stage and what goes into the JSON about it."""
    per = row.per_gpu_bytes
    verdict = Verdict(row.name, planned_peak(per), int(measured.peak), tolerance)
    info = {"zero_stage": row.zero_stage, "plan_bytes": {k: int(v) for k, v in per.items()},
            "planned_peak": verdict.planned, "measured_peak": verdict.measured,
            "ratio": verdict.ratio if math.isfinite(verdict.ratio) else None, "pass": verdict.ok,
            "line": verdict.line(), "after_build": int(measured.after_build),
            "between_steps": int(measured.after_steps),
            # between steps a stage holds at least KEPT and at most ALL_HELD (gradients and buckets it keeps)
            "planned_kept": _sum(per, KEPT), "planned_kept_is": "+".join(KEPT),
            "planned_all_held": _sum(per, ALL_HELD), "planned_all_held_is": "+".join(ALL_HELD)}
    if measured.step_peaks:
        info["step_peaks"] = [int(x) for x in measured.step_peaks]
    if measured.extra:
        info["cuda"] = {**measured.extra, "allowance": ALLOWANCE_BYTES}
    return verdict, info


def detail_line(info: dict) -> str:
    """The informational readings of one stage, in one line (stderr)."""
    text = (f"  ZeRO-{info['zero_stage']}: after build {_size(info['after_build'])}, between steps "
            f"{_size(info['between_steps'])} (plan: weights, masters and Adam {_size(info['planned_kept'])}; with "
            f"gradients and buffers {_size(info['planned_all_held'])})")
    if info.get("step_peaks"):
        text += "; step peaks " + ", ".join(_size(x) for x in info["step_peaks"])
    if "cuda" in info:
        c = info["cuda"]
        text += (f"; peak reserved {_size(c['max_memory_reserved'])}, outside the allocator "
                 f"{_size(c['outside_allocator'])} (the plan's allowance {_size(c['allowance'])})")
    return text


# ------------------------------------------------------------------------------------------------ the command
def build_arg_parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/plan_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default=None, help="run config YAML (default: the embedded default)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. model.backbone=preset:t5-base")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu (dry run)")
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3], help="ZeRO stages to check (default 2 3)")
    p.add_argument("--batch", type=int, default=64,
                   help="micro-batch = global batch on one GPU (default 64, the README's t5-base row)")
    p.add_argument("--steps", type=int, default=3, help="training steps measured per stage (default 3)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="relative to the measured peak (0.15)")
    p.add_argument("--out", default=None, help=f"directory for {JSON_NAME}")
    return p


def _check_args(args: Any) -> None:
    bad = [s for s in args.stages if s not in (0, 1, 2, 3)]
    if bad:
        raise ConfigError(f"--stages {' '.join(map(str, bad))}: ZeRO stages are 0-3")
    if args.batch < 1 or args.steps < 1:
        raise ConfigError(f"--batch and --steps must be at least 1, got {args.batch} and {args.steps}")
    if not 0 < args.tolerance < 1:
        raise ConfigError(f"--tolerance {args.tolerance} must lie between 0 and 1 (0.15 is 15 %)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here; use --device cpu for the dry run")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _environment(device: torch.device) -> dict:
    import deepspeed
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
           "transformers": transformers.__version__, "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory=int(props.total_memory))
    return env


def main(argv: Optional[list[str]] = None) -> int:
    args = build_arg_parser().parse_intermixed_args(argv)
    _check_args(args)
    path, overrides = split_config_arg(args.config, args.overrides)
    cfg = load_config(path, [*overrides, f"train.global_batch_size={args.batch}",
                             f"train.micro_batch_size={args.batch}"])
    device = torch.device(args.device)
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    had_group = torch.distributed.is_initialized()
    try:  # the one-process group it starts and its variables last as long as the check
        ensure_single_process_dist(device.type)
        result = check(args, path, cfg, device)
    finally:
        if not had_group:
            leave_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_NAME).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


def check(args: Any, path: Optional[str], cfg: RunConfig, device: torch.device) -> dict:
    """Plan once, measure each stage, return what goes into the JSON (the lines are printed as they come)."""
    started = time.monotonic()
    plan = make_plan(cfg, 1, 1, None if device.type == "cuda" else 80 * GiB)
    planned_s = time.monotonic() - started
    meter_type = CudaMeter if device.type == "cuda" else CpuMeter
    stages, passed = [], []
    for stage in sorted(set(args.stages)):
        t0 = time.monotonic()
        row = _row(plan, stage)
        try:
            measured = measure_stage(stage_config(cfg, stage), device, args.steps, meter_type())
        except Exception as e:  # one stage's failure must not cost the other's measurement (a GPU run is rare)
            line = f"FAIL {row.name}: the measurement failed: {type(e).__name__}: {_one_line(e)}"
            info = {"zero_stage": stage, "plan_bytes": {k: int(v) for k, v in row.per_gpu_bytes.items()},
                    "planned_peak": planned_peak(row.per_gpu_bytes), "pass": False, "line": line,
                    "error": f"{type(e).__name__}: {e}"}
            ok = False
            del e
        else:
            verdict, info = stage_report(row, measured, args.tolerance)
            line, ok = verdict.line(), verdict.ok
        info["seconds"] = round(time.monotonic() - t0, 1)
        print(line, flush=True)
        if "error" not in info:
            print(detail_line(info), file=sys.stderr, flush=True)
        stages.append(info)
        passed.append(ok)
    activations = {"planned": int(plan.stages[0].per_gpu_bytes["activations"])}
    try:  # informational: the plan's fake-tensor activations against the same tracker on this device's kernels
        activations["measured"] = measure_activations(cfg, device)
        activations["ratio"] = activations["planned"] / max(1, activations["measured"])
        print(f"  activations of one micro-batch: plan {_size(activations['planned'])} (fake tensors), measured "
              f"{_size(activations['measured'])} on {device.type} under the same tracker, plan/measured "
              f"{activations['ratio']:.2f}", file=sys.stderr, flush=True)
    except Exception as e:
        activations["error"] = f"{type(e).__name__}: {e}"
        print(f"  activations: the measurement failed: {activations['error']}", file=sys.stderr, flush=True)
        del e
    return {"passed": all(passed), "tolerance": args.tolerance,
              "settings": {"config": str(path) if path else "embedded default",
                           "backbone": cfg.model.backbone, "method": cfg.model.method,
                           "reduction_factor": cfg.model.reduction_factor,
                           "precision": cfg.train.precision, "micro_batch": args.batch, "steps": args.steps,
                           "tasks": list(cfg.data.tasks), "source_length": cfg.data.max_source_length,
                           "target_length": cfg.data.max_target_length,
                           "gradient_checkpointing": cfg.model.gradient_checkpointing,
                           "metric": "cuda max_memory_allocated" if device.type == "cuda"
                           else "cpu allocator (profiler memory events)"},
              "environment": _environment(device), "plan_seconds": round(planned_s, 1), "stages": stages,
              "activations": activations}


if __name__ == "__main__":
    sys.exit(run_main(main))
