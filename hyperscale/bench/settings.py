"""What one ``hyperscale bench`` run measures: :class:`BenchSettings`, the command-line arguments that set it
(:func:`add_arguments`) and their translation and validation (:func:`settings_from_args`)."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Optional

import torch

from ..data.sample import SAMPLE_TASKS
from ..errors import ConfigError
from ..modeling.config import ARCH_DEFAULTS
from ..modeling.presets import PRESETS

ALL_CONFIGS = ("floor", "floor-compiled", "hyperformer++", "ds-zero0", "ds-zero1", "ds-zero2", "ds-zero3",
               "adapters", "lora", "finetune", "hyperformer++-compiled", "ds-zero0-compiled", "ds-zero1-compiled",
               "ds-zero2-compiled")
DEFAULT_TASKS = SAMPLE_TASKS  # the tasks of the shipped sample, as the default run's


@dataclass(frozen=True)
class BenchSettings:
    """Every setting's default, once: the command line's defaults are read from here (:data:`_DEFAULTS`); the ones
    that differ on a GPU are :data:`GPU_DEFAULTS`."""

    backbone: str = "t5-tiny"
    device: str = "cpu"
    batch: int = 8
    src_len: int = 128
    tgt_len: int = 8
    precision: str = "fp32"
    warmup: int = 3
    steps: int = 10
    configs: list = field(default_factory=list)
    tasks: list = field(default_factory=lambda: list(DEFAULT_TASKS))
    task_mix: str = "same"
    plain_mode: str = "master"
    reduction_factor: int = ARCH_DEFAULTS["reduction_factor"]
    lora_r: int = 8
    seed: int = 0
    threads: Optional[int] = None
    rounds: int = 1
    profile_dir: Optional[str] = None
    profile_steps: int = 3
    gradient_checkpointing: bool = False
    compile_backend: str = "inductor"  # the *-compiled rows (train.compile_backend)
    build_dtype: str = "auto"  # "auto": build in the compute dtype, on the device; "fp32": build fp32, cast
    process_warmup: bool = True
    # largest-batch search (DeepSpeed rows)
    max_batch_search: bool = False
    max_batch_cap: int = 4096
    search_seconds: float = 300.0
    search_steps: int = 2
    search_resolution: int = 1
    fake_mem_limit_mb: Optional[float] = None
    # eval benchmark
    eval: bool = False
    eval_task: str = "rte"
    eval_n: int = 64
    eval_batch: int = 32
    eval_train_steps: int = 30
    eval_max_source_length: int = 128

    @property
    def preset(self) -> str:
        return self.backbone if self.backbone.startswith("preset:") else f"preset:{self.backbone}"

    @property
    def tokens_per_step(self) -> int:
        return self.batch * (self.src_len + self.tgt_len)


_DEFAULTS = {f.name: f.default for f in fields(BenchSettings) if f.default is not MISSING}
GPU_DEFAULTS = {"backbone": "t5-base", "batch": 64, "precision": "bf16"}  # --device cuda (or auto seeing a GPU)


def _parse_list(spec: Optional[str]) -> list[str]:
    return [x.strip() for x in (spec or "").split(",") if x.strip()]


def _resolve_device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu)")
    return spec


def _configs_from_args(args: argparse.Namespace) -> list[str]:
    """The rows to measure: ``--only``'s, none under ``--eval-only``, else the default list."""
    stages = [int(s) for s in _parse_list(args.zero_stages)]
    for s in stages:
        if s not in (0, 1, 2, 3):
            raise ConfigError(f"--zero-stages: {s} is not a ZeRO stage (0-3)")
    if args.eval_only:
        return []
    if args.only:
        configs = _parse_list(args.only)
        unknown = [c for c in configs if c not in ALL_CONFIGS]
        if unknown:
            raise ConfigError(f"--only: unknown configuration(s) {unknown}; known: {', '.join(ALL_CONFIGS)}")
        return configs
    # DeepSpeed rows last: an engine may leave process-wide state behind (hooks, process group)
    return ["floor", "hyperformer++", "adapters", "lora", "finetune"] + [f"ds-zero{s}" for s in stages]


def validate(s: BenchSettings) -> None:
    """Raise ``ConfigError`` for settings no run can have."""
    if min(s.batch, s.src_len, s.tgt_len, s.steps, s.rounds) < 1 or s.warmup < 0:
        raise ConfigError("--batch, --src-len, --tgt-len, --steps and --rounds must be >= 1, --warmup >= 0")
    if s.max_batch_search:
        if not any(c.startswith("ds-zero") for c in s.configs):
            raise ConfigError("--max-batch-search searches the DeepSpeed rows: select at least one ds-zeroN row "
                             "(--only ds-zero2, or --zero-stages)")
        if s.max_batch_cap < s.batch:
            raise ConfigError(f"--max-batch-cap {s.max_batch_cap} is below --batch {s.batch}")
        if min(s.search_steps, s.search_resolution) < 1 or s.search_seconds <= 0:
            raise ConfigError("--search-steps and --search-resolution must be >= 1, --search-seconds > 0")
    if s.fake_mem_limit_mb is not None and s.fake_mem_limit_mb <= 0:
        raise ConfigError("--fake-mem-limit-mb must be > 0")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    device = _resolve_device(args.device)
    on_gpu = device == "cuda"
    by_device = {k: GPU_DEFAULTS[k] if on_gpu else _DEFAULTS[k] for k in GPU_DEFAULTS}
    backbone = args.backbone or by_device["backbone"]
    if backbone.removeprefix("preset:") not in PRESETS:
        raise ConfigError(f"--backbone {backbone!r} is not a preset; presets: {', '.join(sorted(PRESETS))}")
    precision = args.precision or by_device["precision"]
    configs = _configs_from_args(args)
    run_eval = bool(args.eval or args.eval_only)
    tasks = _parse_list(args.tasks) or list(DEFAULT_TASKS)
    if run_eval and args.eval_task not in tasks:  # the eval task joins the model's tasks
        tasks = tasks + [args.eval_task]
    s = BenchSettings(
        backbone=backbone, device=device, batch=args.batch if args.batch is not None else by_device["batch"], src_len=args.src_len,
        tgt_len=args.tgt_len, precision=precision, warmup=args.warmup, steps=args.steps, configs=configs,
        tasks=tasks, task_mix=args.task_mix, plain_mode=args.plain_mode, reduction_factor=args.reduction_factor,
        lora_r=args.lora_r, seed=args.seed, threads=args.threads, rounds=args.rounds,
        profile_dir=args.profile_dir, profile_steps=args.profile_steps,
        eval=run_eval, eval_task=args.eval_task, eval_n=args.eval_n,
        eval_batch=args.eval_batch, eval_train_steps=args.eval_train_steps,
        gradient_checkpointing=bool(args.gradient_checkpointing), build_dtype=args.build_dtype,
        compile_backend=args.compile_backend,
        process_warmup=not args.no_process_warmup, max_batch_search=bool(args.max_batch_search),
        max_batch_cap=args.max_batch_cap, search_seconds=args.search_seconds, search_steps=args.search_steps,
        search_resolution=args.search_resolution, fake_mem_limit_mb=args.fake_mem_limit_mb,
    )
    validate(s)
    return s


def _by_device(key: str) -> str:
    return f"{GPU_DEFAULTS[key]} on cuda, {_DEFAULTS[key]} on cpu"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backbone", default=None, help=f"preset name (default: {_by_device('backbone')})")
    p.add_argument("--batch", type=int, default=None, help=f"examples per step (default: {_by_device('batch')})")
    p.add_argument("--src-len", type=int, default=_DEFAULTS["src_len"], help="source tokens per example")
    p.add_argument("--tgt-len", type=int, default=_DEFAULTS["tgt_len"], help="target tokens per example")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help=f"default: {_by_device('precision')}")
    p.add_argument("--plain-mode", choices=("master", "amp"), default=_DEFAULTS["plain_mode"],
                   help="bf16 plain-loop rows: bf16 model + fp32 master weights (as DeepSpeed), or fp32 trainable "
                        "weights + autocast")
    p.add_argument("--warmup", type=int, default=_DEFAULTS["warmup"], help="untimed steps per configuration")
    p.add_argument("--steps", type=int, default=_DEFAULTS["steps"], help="timed steps per configuration (median reported)")
    p.add_argument("--rounds", type=int, default=_DEFAULTS["rounds"],
                   help="run the configuration list this many times, interleaved, pooling the timed steps")
    p.add_argument("--only", default=None, help=f"comma-separated configurations out of: {', '.join(ALL_CONFIGS)}")
    p.add_argument("--zero-stages", default="0,2,3", help="ZeRO stages of the default ds-zeroN rows")
    p.add_argument("--tasks", default=None, help=f"task names of the model (default: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--task-mix", choices=("same", "mixed"), default=_DEFAULTS["task_mix"],
                   help="one task per batch (the trainer's default sampler) or every task in every batch")
    p.add_argument("--reduction-factor", type=int, default=_DEFAULTS["reduction_factor"])
    p.add_argument("--lora-r", type=int, default=_DEFAULTS["lora_r"])
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (CPU); 1 gives stable numbers on a shared machine")
    p.add_argument("--compile-backend", default=_DEFAULTS["compile_backend"],
                   help="torch.compile backend of the *-compiled rows (default inductor; aot_eager skips code generation)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="HF activation checkpointing (non-reentrant) on the backbone of every row")
    p.add_argument("--build-dtype", choices=("auto", "fp32"), default=_DEFAULTS["build_dtype"],
                   help="auto: construct the backbone and adapters directly in the compute dtype (bf16 under "
                        "--precision bf16), on the device; fp32: construct in fp32 and cast (the trainer's path)")
    p.add_argument("--no-process-warmup", action="store_true",
                   help="skip the untimed floor step before the first row (saves a big backbone's extra build)")
    p.add_argument("--max-batch-search", action="store_true",
                   help="after timing, search the largest batch that fits for each ds-zeroN row: doubling from "
                        "--batch, then bisection; out-of-memory means 'does not fit'")
    p.add_argument("--max-batch-cap", type=int, default=_DEFAULTS["max_batch_cap"], help="largest batch the search tries")
    p.add_argument("--search-seconds", type=float, default=_DEFAULTS["search_seconds"],
                   help="time budget of each search (no try starts that would likely end after it)")
    p.add_argument("--search-steps", type=int, default=_DEFAULTS["search_steps"],
                   help="timed steps per search try (after one warm-up)")
    p.add_argument("--search-resolution", type=int, default=_DEFAULTS["search_resolution"],
                   help="stop bisecting when largest fit and smallest failure are this close")
    p.add_argument("--fake-mem-limit-mb", type=float, default=None,
                   help="simulate a device of this many MB: a row whose measured peak exceeds it fails with a "
                        "simulated out-of-memory error (CPU: sampled RSS; CUDA: max_memory_allocated)")
    p.add_argument("--profile-dir", default=None, help="also profile each configuration (torch.profiler) into DIR")
    p.add_argument("--profile-steps", type=int, default=_DEFAULTS["profile_steps"])
    p.add_argument("--json-out", default=None, help="write the result as JSON here")
    p.add_argument("--table-out", default=None, help="also write the table (markdown) here")
    p.add_argument("--eval", action="store_true",
                   help="also run the eval benchmark (rank classification vs generation)")
    p.add_argument("--eval-only", action="store_true", help="run only the eval benchmark")
    p.add_argument("--eval-task", default=_DEFAULTS["eval_task"])
    p.add_argument("--eval-n", type=int, default=_DEFAULTS["eval_n"], help="examples to predict")
    p.add_argument("--eval-batch", type=int, default=_DEFAULTS["eval_batch"])
    p.add_argument("--eval-train-steps", type=int, default=_DEFAULTS["eval_train_steps"],
                   help="steps fitting the random-weight model to the task first, so generation yields labels")
    return p
