"""Side-by-side training-step benchmark: HyperFormer++ against the frozen-backbone floor and the usual alternatives.

In one process, on one device, with one backbone shape, batch and sequence lengths (random token ids,
random weights from the offline presets), it times training steps of:

``floor``
    the frozen backbone, forward + backward through every layer (the input embeddings require grad,
    so backward reaches the first encoder layer), no adapters and no optimizer: no method that puts
    something in every layer can be cheaper;
``hyperformer++``
    ``HyperscaleModel`` (method ``hyperformer++``) in a plain PyTorch loop;
``ds-zeroN``
    the same model under a DeepSpeed engine built from the trainer's own ``build_ds_config`` (one
    process, world size 1), for each ZeRO stage in ``--zero-stages``; the default run config uses ZeRO-2;
``adapters``
    static per-task bottleneck adapters (method ``adapters``), plain loop;
``lora``
    PEFT LoRA r=8 on q and v (skipped with a note when ``peft`` is not importable), plain loop;
``finetune``
    full fine-tuning (method ``finetune``), plain loop;
``floor-compiled`` (opt-in through ``--only``)
    the floor with the backbone under ``torch.compile``: the floor every method could reach with
    compiled kernels.

Every step computes the same loss as the trainer (token cross-entropy on fp32 logits, teacher forcing
with ``decoder_input_ids = shift_right(labels)``), clips gradients at the run config's ``grad_clip``
and takes an AdamW step with the run config's hyperparameters.

Precision (``--precision bf16``): every row computes in bf16. Plain-loop rows (``--plain-mode
master``, the default) hold the whole model in bf16 and keep fp32 master copies of the trainable
weights, updated by ``torch.optim.AdamW`` (fused on CUDA) and copied back after each step: the same
arithmetic as DeepSpeed's bf16 mode, so a ``ds-zeroN`` row over the ``hyperformer++`` row is the
engine's own overhead. ``--plain-mode amp`` instead keeps trainable weights in fp32 and frozen ones in
bf16 and runs the forward under ``torch.autocast`` (what a hand-written loop often does; it pays
fp32->bf16 casts of the trainable weights inside every forward). ``--precision fp32``: fp32 throughout.

Timing: ``--warmup`` untimed steps, then ``--steps`` timed steps, each bracketed by
``torch.cuda.synchronize()`` on CUDA; the median is reported. Memory: on CUDA the peak of
``torch.cuda.max_memory_allocated`` from building the configuration to its last step; on CPU the peak
resident set size sampled every 5 ms over the same span, minus the RSS before building it (an
approximation: memory freed by an earlier configuration and reused does not show).

Building (``--build-dtype auto``, the default): the backbone and the adapter bank are constructed
directly in the compute dtype (bf16 under ``--precision bf16``) and, on CUDA, directly on the device
(``torch.device`` context + default dtype), so an 11B backbone never exists in fp32 or on the host
(22 GB of bf16 weights instead of 44 GB fp32 plus the cast). ``--build-dtype fp32`` builds in fp32
and casts, as the trainer does for a preset.

``--gradient-checkpointing`` enables HF activation checkpointing (``gradient_checkpointing_enable(
gradient_checkpointing_kwargs={"use_reentrant": False})``) on the backbone of every row; each row
records whether it was active. ``HyperscaleModel`` replays its adapter context inside the recomputation.

``--max-batch-search`` (DeepSpeed rows): after the rows are timed at ``--batch``, search the largest
batch that fits for each ``ds-zeroN`` row: doubling from ``--batch`` up to ``--max-batch-cap``, then
bisection down to ``--search-resolution``, within ``--search-seconds``. Each try builds the row afresh,
runs one warm-up and ``--search-steps`` timed steps, and is freed completely (``engine.destroy()``,
``gc.collect()``, ``torch.cuda.empty_cache()``) before the next; an out-of-memory error
(``torch.cuda.OutOfMemoryError``) means "does not fit", any other error stops the search.
``--fake-mem-limit-mb`` raises a simulated out-of-memory error in any row whose measured peak
exceeds the limit (CPU: sampled RSS; CUDA: ``max_memory_allocated``): the search logic runs on a
CPU, and a GPU run can ask what a smaller card would fit.

The eval benchmark (``--eval``) compares rank classification with greedy generation
(``hyperscale.training.evaluate``) on the same examples of a classification task.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib
import json
import logging
import math
import os
import platform
import socket
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ALL_CONFIGS = ("floor", "floor-compiled", "hyperformer++", "ds-zero0", "ds-zero1", "ds-zero2", "ds-zero3",
               "adapters", "lora", "finetune")
DEFAULT_TASKS = ("rte", "mrpc", "sst2", "cola", "stsb", "cb")
ROW_FIELDS = ("name", "method", "runner", "zero_stage", "precision", "status", "ms_median", "ms_mean", "ms_min",
              "ms_max", "steps", "tokens_per_s", "peak_mem_mb", "mem_metric", "ratio_to_floor", "ratio_to_plain",
              "trainable_params", "total_params", "loss_first", "loss_last", "note", "error", "rounds",
              "times_ms", "batch", "gradient_checkpointing", "oom")
SEARCH_FIELDS = ("row", "start", "cap", "resolution", "budget_s", "status", "max_batch", "first_failing_batch",
                 "failure", "best", "tries", "elapsed_s", "predicted_max_batch", "limit_mb")


# =============================================================================================== settings
@dataclass
class BenchSettings:
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
    reduction_factor: int = 32
    lora_r: int = 8
    seed: int = 0
    threads: Optional[int] = None
    rounds: int = 1
    profile_dir: Optional[str] = None
    profile_steps: int = 3
    gradient_checkpointing: bool = False
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


def _parse_list(spec: Optional[str]) -> list[str]:
    return [x.strip() for x in (spec or "").split(",") if x.strip()]


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu)")
    on_gpu = device == "cuda"
    backbone = args.backbone or ("t5-base" if on_gpu else "t5-tiny")
    from .modeling.presets import PRESETS

    if backbone.removeprefix("preset:") not in PRESETS:
        raise ValueError(f"--backbone {backbone!r} is not a preset; presets: {', '.join(sorted(PRESETS))}")
    precision = args.precision or ("bf16" if on_gpu else "fp32")
    stages = [int(s) for s in _parse_list(args.zero_stages)]
    for s in stages:
        if s not in (0, 1, 2, 3):
            raise ValueError(f"--zero-stages: {s} is not a ZeRO stage (0-3)")
    # DeepSpeed rows last: an engine may leave process-wide state behind (hooks, process group)
    default = ["floor", "hyperformer++", "adapters", "lora", "finetune"] + [f"ds-zero{s}" for s in stages]
    if args.eval_only:
        configs: list[str] = []
    elif args.only:
        configs = _parse_list(args.only)
        unknown = [c for c in configs if c not in ALL_CONFIGS]
        if unknown:
            raise ValueError(f"--only: unknown configuration(s) {unknown}; known: {', '.join(ALL_CONFIGS)}")
    else:
        configs = default
    tasks = _parse_list(args.tasks) or list(DEFAULT_TASKS)
    s = BenchSettings(
        backbone=backbone, device=device, batch=args.batch or (64 if on_gpu else 8), src_len=args.src_len,
        tgt_len=args.tgt_len, precision=precision, warmup=args.warmup, steps=args.steps, configs=configs,
        tasks=tasks, task_mix=args.task_mix, plain_mode=args.plain_mode, reduction_factor=args.reduction_factor,
        lora_r=args.lora_r, seed=args.seed, threads=args.threads, rounds=args.rounds,
        profile_dir=args.profile_dir, profile_steps=args.profile_steps,
        eval=bool(args.eval or args.eval_only), eval_task=args.eval_task, eval_n=args.eval_n,
        eval_batch=args.eval_batch, eval_train_steps=args.eval_train_steps,
        gradient_checkpointing=bool(args.gradient_checkpointing), build_dtype=args.build_dtype,
        process_warmup=not args.no_process_warmup, max_batch_search=bool(args.max_batch_search),
        max_batch_cap=args.max_batch_cap, search_seconds=args.search_seconds, search_steps=args.search_steps,
        search_resolution=args.search_resolution, fake_mem_limit_mb=args.fake_mem_limit_mb,
    )
    if min(s.batch, s.src_len, s.tgt_len, s.steps, s.rounds) < 1 or s.warmup < 0:
        raise ValueError("--batch, --src-len, --tgt-len, --steps and --rounds must be >= 1, --warmup >= 0")
    if s.max_batch_search:
        if not any(c.startswith("ds-zero") for c in s.configs):
            raise ValueError("--max-batch-search searches the DeepSpeed rows: select at least one ds-zeroN row "
                             "(--only ds-zero2, or --zero-stages)")
        if s.max_batch_cap < s.batch:
            raise ValueError(f"--max-batch-cap {s.max_batch_cap} is below --batch {s.batch}")
        if min(s.search_steps, s.search_resolution) < 1 or s.search_seconds <= 0:
            raise ValueError("--search-steps and --search-resolution must be >= 1, --search-seconds > 0")
    if s.fake_mem_limit_mb is not None and s.fake_mem_limit_mb <= 0:
        raise ValueError("--fake-mem-limit-mb must be > 0")
    if s.eval and s.eval_task not in s.tasks:
        s.tasks = s.tasks + [s.eval_task]
    return s


# =============================================================================================== helpers
class _RssSampler:
    """Peak resident set size of this process, sampled by a thread (CPU memory approximation)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.start_rss = self.rss()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:  # not Linux: fall back to the (monotonic) high-water mark
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_single_process_dist(device: str) -> None:
    """Start a world-size-1 process group the way the trainer's launcher would (rank variables set)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ValueError("the benchmark runs in one process: launch it with plain python, not torchrun/deepspeed")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    if device == "cuda":
        torch.cuda.set_device(0)
    import deepspeed

    for name in ("DeepSpeed", "deepspeed"):  # its per-engine INFO/WARNING chatter would bury the table
        logging.getLogger(name).setLevel(logging.ERROR)
    if not dist.is_initialized():
        deepspeed.init_distributed()


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class SimulatedOutOfMemoryError(RuntimeError):
    """Raised by ``--fake-mem-limit-mb`` when a row's measured peak exceeds the limit: treated exactly like
    ``torch.cuda.OutOfMemoryError`` (the largest-batch search runs on a CPU)."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means "does not fit in memory" (CUDA OOM, the simulated one, a failed CPU allocation)."""
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t is not None)
    if isinstance(exc, (SimulatedOutOfMemoryError, MemoryError)) or (oom_types and isinstance(exc, oom_types)):
        return True
    msg = str(exc)  # older or wrapped forms of the same failures
    return isinstance(exc, RuntimeError) and ("CUDA out of memory" in msg or "can't allocate memory" in msg)


def build_dtype(s: BenchSettings):
    """The dtype the backbone and adapters are constructed in (see ``--build-dtype``)."""
    import torch

    if s.build_dtype == "fp32" or s.precision == "fp32":
        return torch.float32
    return torch.bfloat16


@contextlib.contextmanager
def build_context(s: BenchSettings):
    """Construct modules directly in ``build_dtype(s)`` (default-dtype switch) and, on CUDA, directly on the
    device: a t5-v1_1-xxl backbone is then 22 GB of bf16 on the GPU, never 44 GB of fp32 on the host."""
    import torch

    old = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        if s.device == "cuda":
            stack.enter_context(torch.device("cuda"))
        torch.set_default_dtype(build_dtype(s))
        try:
            yield
        finally:
            torch.set_default_dtype(old)


def _new_backbone(s: BenchSettings):
    """The preset backbone as the trainer builds it (``load_backbone``), randomly initialised from the same
    seed for every configuration, created directly on the device in ``build_dtype(s)``."""
    import torch

    from .modeling.model import load_backbone

    torch.manual_seed(s.seed)
    if s.device == "cuda":
        try:
            with build_context(s):
                return load_backbone(s.preset)[0]
        except Exception as e:  # pragma: no cover - fall back to building on the host
            if is_oom(e):
                raise
            print(f"[bench] building on the device failed ({type(e).__name__}: {e}); building on the host",
                  file=sys.stderr, flush=True)
            torch.manual_seed(s.seed)
    host = dataclasses.replace(s, device="cpu")
    with build_context(host):
        return load_backbone(s.preset)[0].to(s.device)


def enable_checkpointing(backbone, s: BenchSettings) -> None:
    """``--gradient-checkpointing``: HF activation checkpointing (non-reentrant), as the trainer enables it."""
    import warnings

    if not s.gradient_checkpointing:
        return
    with warnings.catch_warnings():  # transformers 5.2x renames it (activation_checkpointing_enable)
        warnings.simplefilter("ignore", FutureWarning)
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def checkpointing_active(backbone) -> bool:
    return any(bool(getattr(m, "gradient_checkpointing", False)) for m in backbone.modules())


def _make_batch(s: BenchSettings, vocab: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(s.seed + 1)
    input_ids = torch.randint(2, vocab, (s.batch, s.src_len), generator=g)
    labels = torch.randint(2, vocab, (s.batch, s.tgt_len), generator=g)
    decoder_input_ids = torch.cat([torch.zeros(s.batch, 1, dtype=torch.long), labels[:, :-1]], dim=1)
    if s.task_mix == "mixed":
        task_ids = torch.arange(s.batch) % len(s.tasks)
    else:
        task_ids = torch.zeros(s.batch, dtype=torch.long)
    return {"input_ids": input_ids.to(s.device), "attention_mask": torch.ones_like(input_ids).to(s.device),
            "labels": labels.to(s.device), "decoder_input_ids": decoder_input_ids.to(s.device),
            "task_ids": task_ids}  # task ids stay on the host, as the trainer's collator leaves them


def _loss(logits, labels):
    """The trainer's objective (mean over examples of each example's mean token loss), for the plain rows."""
    from .training.engine import per_example_loss

    return per_example_loss(logits, labels).mean()


def _run_config() -> Any:
    from .training.config import RunConfig

    return RunConfig()


class _PlainOptimizer:
    """AdamW + clipping for the plain-loop rows, in the precision layout of ``--plain-mode``."""

    def __init__(self, params: list, s: BenchSettings, master: bool):
        import torch

        t = _run_config().train
        self.params = params
        self.clip = float(t.grad_clip)
        kw = dict(lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps, weight_decay=t.weight_decay)
        if s.device == "cuda":
            kw["fused"] = True
        self.master = [p.detach().float().clone().requires_grad_(True) for p in params] if master else None
        self.opt = torch.optim.AdamW(self.master if master else params, **kw)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        if self.master is not None:
            for p in self.master:
                p.grad = None

    def step(self) -> None:
        import torch

        if self.master is not None:
            for m, p in zip(self.master, self.params):
                m.grad = p.grad.float() if p.grad is not None else None
        targets = self.master if self.master is not None else self.params
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in targets if p.grad is not None], self.clip, foreach=True)
        self.opt.step()
        if self.master is not None:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], [m.data for m in self.master])


def _prepare_plain(module, trainable: list, s: BenchSettings) -> tuple[Optional[_PlainOptimizer], Callable]:
    """Cast ``module`` for ``--precision``/``--plain-mode``; return (optimizer or None, autocast factory)."""
    import torch

    if s.precision == "fp32":
        module.float()
        return (_PlainOptimizer(trainable, s, master=False) if trainable else None), contextlib.nullcontext
    module.to(torch.bfloat16)
    if s.plain_mode == "amp":
        for p in trainable:
            p.data = p.data.float()
        opt = _PlainOptimizer(trainable, s, master=False) if trainable else None
        return opt, lambda: torch.autocast(device_type=s.device, dtype=torch.bfloat16)
    return (_PlainOptimizer(trainable, s, master=True) if trainable else None), contextlib.nullcontext


def _count(module) -> tuple[int, int]:
    seen: set = set()
    total = trainable = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


# =============================================================================================== configurations
@dataclass
class _Built:
    step: Callable[[], Any]  # one training step; returns the loss tensor
    method: str
    runner: str
    trainable: int
    total: int
    zero_stage: Optional[int] = None
    note: str = ""
    cleanup: Callable[[], None] = lambda: None
    keep: list = field(default_factory=list)  # objects to keep alive until cleanup
    checkpointing: bool = False  # activation checkpointing active in the backbone


def _hyperscale_model(s: BenchSettings, method: str):
    from .modeling.model import HyperscaleModel

    backbone = _new_backbone(s)
    with build_context(s):  # the adapter bank: same dtype and device as the backbone
        model = HyperscaleModel.from_backbone(backbone, s.tasks, method=method, reduction_factor=s.reduction_factor)
    enable_checkpointing(model.backbone, s)
    return model.to(s.device)


def _build_floor(s: BenchSettings, batch: dict, compiled: bool = False) -> _Built:
    import torch

    bb = _new_backbone(s)
    bb.requires_grad_(False)
    bb.train()
    enable_checkpointing(bb, s)
    _, autocast = _prepare_plain(bb, [], s)
    embed = bb.get_input_embeddings()
    fwd = torch.compile(bb) if compiled else bb

    def step():
        with autocast():
            # the input embeddings require grad: backward runs through every encoder and decoder layer
            inputs_embeds = embed(batch["input_ids"]).detach().requires_grad_(True)
            out = fwd(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"],
                      decoder_input_ids=batch["decoder_input_ids"])
            loss = _loss(out.logits, batch["labels"])
        loss.backward()
        return loss

    trainable, total = _count(bb)
    note = "torch.compile(backbone)" if compiled else ""
    return _Built(step, "none (frozen backbone)", "plain", trainable, total, note=note, keep=[bb],
                  checkpointing=checkpointing_active(bb))


def _plain_step(model, opt: Optional[_PlainOptimizer], autocast: Callable, batch: dict, with_tasks: bool):
    def step():
        if opt is not None:
            opt.zero_grad()
        kwargs = {"task_ids": batch["task_ids"]} if with_tasks else {}
        with autocast():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=batch["decoder_input_ids"], **kwargs)
            loss = _loss(out.logits, batch["labels"])
        loss.backward()
        if opt is not None:
            opt.step()
        return loss

    return step


def _build_method(s: BenchSettings, batch: dict, method: str) -> _Built:
    model = _hyperscale_model(s, method)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, autocast = _prepare_plain(model, trainable, s)
    n_tr, n_tot = _count(model)
    return _Built(_plain_step(model, opt, autocast, batch, model.bank is not None), method, "plain", n_tr, n_tot,
                  keep=[model, opt], checkpointing=checkpointing_active(model.backbone))


def _build_lora(s: BenchSettings, batch: dict) -> _Built:
    import peft

    bb = _new_backbone(s)
    enable_checkpointing(bb, s)
    cfg = peft.LoraConfig(r=s.lora_r, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")
    with build_context(s):  # the LoRA matrices: same dtype and device as the backbone
        model = peft.get_peft_model(bb, cfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, autocast = _prepare_plain(model, trainable, s)
    n_tr, n_tot = _count(model)
    note = (f"peft {peft.__version__}: LoraConfig(r={cfg.r}, lora_alpha={cfg.lora_alpha}, "
            f"lora_dropout={cfg.lora_dropout}, target_modules=q,v)")
    return _Built(_plain_step(model, opt, autocast, batch, False), f"lora r={s.lora_r} (q,v)", "plain", n_tr,
                  n_tot, note=note, keep=[model, opt], checkpointing=checkpointing_active(bb))


def trainer_ds_config(s: BenchSettings, stage: int) -> dict:
    """The trainer's DeepSpeed config for this batch (world size 1, no accumulation) and stage."""
    from .training.ds_config import build_ds_config

    return build_ds_config(bench_run_config(s, stage), 1)


def bench_run_config(s: BenchSettings, stage: int) -> Any:
    """The run config a trainer run of this benchmark's shape would have (world size 1, no accumulation)."""
    cfg = _run_config()
    train = dataclasses.replace(cfg.train, global_batch_size=s.batch, micro_batch_size=s.batch, precision=s.precision,
                                max_steps=max(cfg.train.max_steps, s.warmup + s.steps + s.profile_steps + 1))
    return dataclasses.replace(cfg, train=train, deepspeed=dataclasses.replace(cfg.deepspeed, zero_stage=stage))


def _build_deepspeed(s: BenchSettings, batch: dict, stage: int) -> _Built:
    """HyperFormer++ under the trainer's own engine (``training.engine.build_engine``: same DeepSpeed config,
    trainable-only parameters, checkpoint filter, ZeRO-3 persistence) and the trainer's loss."""
    import torch

    from .training.engine import build_engine, forward_loss

    ensure_single_process_dist(s.device)
    # built on the device in the compute dtype (--build-dtype auto): the engine's bf16 cast is then a
    # no-op; --build-dtype fp32 hands it an fp32 module, as the trainer does, and the engine casts it
    model = _hyperscale_model(s, "hyperformer++")
    engine = build_engine(model, trainer_ds_config(s, stage), torch.device(s.device))
    engine.train()

    def step():
        loss, _ = forward_loss(engine, batch, batch["task_ids"])
        engine.backward(loss)
        engine.step()
        return loss

    n_tr, n_tot = _count(model)

    def cleanup():
        engine.destroy()

    return _Built(step, "hyperformer++", "deepspeed", n_tr, n_tot, zero_stage=stage, cleanup=cleanup,
                  keep=[model, engine], checkpointing=checkpointing_active(model.backbone))


def _build(name: str, s: BenchSettings, batch: dict) -> _Built:
    if name == "floor":
        return _build_floor(s, batch)
    if name == "floor-compiled":
        return _build_floor(s, batch, compiled=True)
    if name in ("hyperformer++", "adapters", "finetune"):
        return _build_method(s, batch, name)
    if name == "lora":
        return _build_lora(s, batch)
    if name.startswith("ds-zero"):
        return _build_deepspeed(s, batch, int(name.removeprefix("ds-zero")))
    raise ValueError(f"unknown configuration {name!r}")


def _peft_available() -> bool:
    try:
        importlib.import_module("peft")
        return True
    except ImportError:
        return False


def _empty_row(name: str, s: BenchSettings) -> dict:
    row = {k: None for k in ROW_FIELDS}
    row.update(name=name, precision=s.precision, status="ok", note="", batch=s.batch)
    return row


def _profile(name: str, built: _Built, s: BenchSettings) -> dict:
    """Profile ``s.profile_steps`` more steps (torch.profiler); write the op table to the profile dir and
    return per-step counts: ATen ops (the host-side dispatches), autograd backward nodes and, on CUDA,
    device kernels: eager T5 at benchmark sizes is bound by these counts, not by FLOPs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        for _ in range(s.profile_steps):
            built.step()
        _sync(s.device)
    events = prof.key_averages()
    n = max(1, s.profile_steps)
    cuda_type = getattr(torch.autograd, "DeviceType", None)
    summary = {
        "steps": s.profile_steps,
        "aten_ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / n,
        "backward_nodes_per_step": sum(e.count for e in events
                                       if "Backward" in e.key and "evaluate_function" in e.key) / n,
    }
    if s.device == "cuda" and cuda_type is not None:
        summary["cuda_kernels_per_step"] = sum(e.count for e in events
                                               if getattr(e, "device_type", None) == cuda_type.CUDA) / n
    table = None
    for key in (("self_device_time_total", "self_cuda_time_total") if s.device == "cuda" else ("self_cpu_time_total",)):
        try:
            table = events.table(sort_by=key, row_limit=60)
            break
        except Exception:  # the key's name changed across torch versions
            continue
    out = Path(s.profile_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = (f"# {name}: {s.profile_steps} steps, {s.backbone}, batch {s.batch}, {s.src_len}+{s.tgt_len} tokens, "
            f"{s.precision}, {s.device}\n# per step: " + json.dumps({k: v for k, v in summary.items() if k != "steps"}))
    (out / f"{name.replace('+', 'p')}.txt").write_text(head + "\n" + (table or events.table(row_limit=60)) + "\n")
    return summary


def measure(name: str, s: BenchSettings, batch: dict, profile: bool = True) -> dict:
    """Build configuration ``name``, time its steps, return its row (``status`` ok / skipped / error)."""
    import torch

    row = _empty_row(name, s)
    if name == "lora" and not _peft_available():
        row.update(status="skipped", method="lora", runner="plain", note="peft is not importable: pip install peft")
        return row
    cuda = s.device == "cuda"
    built: Optional[_Built] = None
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sampler = _RssSampler() if not cuda else None

    def peak_mb() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return (max(sampler.peak, sampler.rss()) - sampler.start_rss) / 2**20

    try:
        with (sampler if sampler is not None else contextlib.nullcontext()):
            built = _build(name, s, batch)
            times, losses = [], []
            for i in range(s.warmup + s.steps):
                _sync(s.device)
                t0 = time.perf_counter()
                loss = built.step()
                _sync(s.device)
                dt = time.perf_counter() - t0
                if i >= s.warmup:
                    times.append(dt)
                    losses.append(float(loss.detach()))
                if s.fake_mem_limit_mb is not None and peak_mb() > s.fake_mem_limit_mb:
                    raise SimulatedOutOfMemoryError(
                        f"simulated out of memory: peak {peak_mb():.1f} MB > --fake-mem-limit-mb "
                        f"{s.fake_mem_limit_mb:g} after step {i + 1}")
            if cuda:
                peak = torch.cuda.max_memory_allocated()
        if s.fake_mem_limit_mb is not None and peak_mb() > s.fake_mem_limit_mb:  # the sampler's last reading
            raise SimulatedOutOfMemoryError(f"simulated out of memory: peak {peak_mb():.1f} MB > "
                                            f"--fake-mem-limit-mb {s.fake_mem_limit_mb:g}")
        if s.profile_dir and profile:
            try:
                row["profile"] = _profile(name, built, s)
            except Exception as e:  # a profiler failure must not cost the timings
                traceback.print_exc(file=sys.stderr)
                row["profile"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        row.update(
            method=built.method, runner=built.runner, zero_stage=built.zero_stage, trainable_params=built.trainable,
            total_params=built.total, loss_first=losses[0], loss_last=losses[-1], note=built.note,
            times_ms=[t * 1000.0 for t in times], rounds=1, gradient_checkpointing=built.checkpointing,
        )
        _set_stats(row, s)
        if cuda:
            row.update(peak_mem_mb=peak / 2**20, mem_metric="cuda max_memory_allocated")
        else:
            row.update(peak_mem_mb=(sampler.peak - sampler.start_rss) / 2**20,
                       mem_metric="cpu sampled peak RSS minus RSS before build")
        if not all(math.isfinite(x) for x in losses):
            row["note"] = (row["note"] + "; " if row["note"] else "") + "non-finite loss"
    except Exception as e:  # one failing configuration must not cost the others (a GPU run is not repeatable)
        oom = is_oom(e)
        if oom:  # expected during a largest-batch search: one line, not a traceback
            print(f"[bench] {name} at batch {s.batch}: out of memory ({type(e).__name__}: {str(e)[:300]})",
                  file=sys.stderr, flush=True)
        else:
            traceback.print_exc(file=sys.stderr)
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:2000], oom=oom)
        try:  # how far it got: the peak up to the failure
            row.update(peak_mem_mb=peak_mb(), mem_metric=("cuda max_memory_allocated" if cuda else
                                                          "cpu sampled peak RSS minus RSS before build"))
        except Exception:  # pragma: no cover
            pass
        if built is not None:
            row.update(method=built.method, runner=built.runner, zero_stage=built.zero_stage,
                       gradient_checkpointing=built.checkpointing)
        del e  # its traceback holds the failed step's frames (activations): drop it before freeing memory
    finally:
        if built is not None:
            try:
                built.cleanup()
            except Exception:  # pragma: no cover
                traceback.print_exc(file=sys.stderr)
            built.keep.clear()
        del built
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if row["oom"] is None and row["status"] == "ok":
        row["oom"] = False
    if name.startswith("ds-zero") and row["runner"] is None:
        row.update(method="hyperformer++", runner="deepspeed", zero_stage=int(name.removeprefix("ds-zero")))
    return row


def _set_stats(row: dict, s: BenchSettings) -> None:
    ms = sorted(row["times_ms"])
    med = statistics.median(ms)
    row.update(ms_median=med, ms_mean=statistics.fmean(ms), ms_min=ms[0], ms_max=ms[-1], steps=len(ms),
               tokens_per_s=s.tokens_per_step / (med / 1000.0))


def _merge_round(old: dict, new: dict, s: BenchSettings) -> dict:
    """Fold a later round's row into the first one: timed steps pooled, memory peak = max."""
    if old["status"] != "ok" or new["status"] != "ok":
        return old if old["status"] != "ok" else new
    old["times_ms"] = old["times_ms"] + new["times_ms"]
    old["peak_mem_mb"] = max(old["peak_mem_mb"], new["peak_mem_mb"])
    old["loss_last"] = new["loss_last"]
    old["rounds"] += 1
    _set_stats(old, s)
    return old


def _process_warmup(s: BenchSettings, batch: dict) -> None:
    """One untimed floor step first, so lazy one-time initialisation (kernels, allocator, library state)
    is charged to no configuration's time or memory."""
    if not s.process_warmup:
        return
    built = _build_floor(s, batch)
    built.step()
    _sync(s.device)
    built.keep.clear()
    del built
    gc.collect()
    if s.device == "cuda":
        import torch

        torch.cuda.empty_cache()


def add_ratios(rows: list[dict]) -> None:
    """``ratio_to_floor`` against the ``floor`` row of the same run; ``ratio_to_plain`` for DeepSpeed rows
    against the ``hyperformer++`` plain-loop row of the same run."""
    by_name = {r["name"]: r for r in rows if r["status"] == "ok"}
    floor = by_name.get("floor", {}).get("ms_median")
    plain = by_name.get("hyperformer++", {}).get("ms_median")
    for r in rows:
        if r["status"] != "ok":
            continue
        r["ratio_to_floor"] = r["ms_median"] / floor if floor else None
        if r["runner"] == "deepspeed":
            r["ratio_to_plain"] = r["ms_median"] / plain if plain else None


# =============================================================================================== largest batch
def _try_outcome(t: dict) -> str:
    return t["status"] if t["status"] in ("ok", "oom") else "error"


def search_max_batch(try_batch: Callable[[int], dict], start: int, cap: int, resolution: int = 1,
                     budget_s: float = math.inf, first: Optional[dict] = None,
                     clock: Callable[[], float] = time.monotonic,
                     on_try: Optional[Callable[[dict], None]] = None) -> dict:
    """The largest batch size that runs: doubling from ``start`` up to ``cap``, then bisection until the
    bracket (largest fit, smallest failure) is at most ``resolution`` wide (when nothing has fit yet, the
    bisection goes on down to batch 1).

    ``try_batch(b)`` runs one try and returns a dict with ``batch``, ``status`` ("ok", "oom" or
    "error"), ``seconds`` and whatever else it measured; ``first``, if given, is the already measured
    try at ``start``. An out-of-memory try bounds the search from above; any other error stops it
    (status "error": the device may be unusable after it). A try is not started when the time spent
    plus its estimate exceeds ``budget_s``: the last fitting try's duration, its stepping part
    (``step_s``, if given) scaled by the batch ratio, the rest (building) taken as fixed.
    Returns {status: converged | cap | budget | error, max_batch, first_failing_batch, failure, tries}.
    """
    if start < 1 or cap < start or resolution < 1:
        raise ValueError(f"bad search bounds: start {start}, cap {cap}, resolution {resolution}")
    t0 = clock()
    tries: list[dict] = []
    state: dict[str, Any] = {"lo": 0, "hi": None, "failure": None, "last_ok": None, "error": False}

    def run(b: int) -> None:
        t = first if (first is not None and b == start and not tries) else try_batch(b)
        t = dict(t, batch=b)
        tries.append(t)
        outcome = _try_outcome(t)
        if outcome == "ok":
            if b > state["lo"]:
                state["lo"] = b
            state["last_ok"] = t
        else:
            if state["hi"] is None or b < state["hi"]:
                state["hi"], state["failure"] = b, outcome
            state["error"] = state["error"] or outcome == "error"
        if on_try is not None:
            on_try(t)

    def over_budget(b: int) -> bool:
        spent = clock() - t0
        last = state["last_ok"]
        estimate = 0.0
        if last is not None and last.get("seconds"):
            total = float(last["seconds"])
            stepping = min(total, float(last.get("step_s") or total))
            estimate = total - stepping + stepping * max(1.0, b / last["batch"])
        return spent + estimate > budget_s

    status = None
    run(start)
    while status is None and not state["error"] and state["hi"] is None:  # doubling
        if state["lo"] >= cap:
            status = "cap"
            break
        nxt = min(2 * state["lo"], cap)
        if over_budget(nxt):
            status = "budget"
            break
        run(nxt)
    # bisection; until something fits, down to batch 1 whatever the resolution
    while status is None and not state["error"] and state["hi"] - state["lo"] > (resolution if state["lo"] else 1):
        mid = (state["lo"] + state["hi"]) // 2
        if over_budget(mid):
            status = "budget"
            break
        run(mid)
    if state["error"]:
        status = "error"
    best = next((t for t in tries if t["batch"] == state["lo"] and _try_outcome(t) == "ok"), None)
    return {"status": status or "converged", "max_batch": state["lo"] or None,
            "first_failing_batch": state["hi"], "failure": state["failure"], "best": best, "tries": tries,
            "elapsed_s": clock() - t0}


def _linear_max_batch(tries: list[dict], limit_mb: Optional[float]) -> Optional[int]:
    """Extrapolate the largest batch from the peaks of the two largest fitting tries (peak = a + b x batch):
    the slope near the boundary, untouched by one-time costs of the first build (CPU RSS shows them)."""
    pts = {t["batch"]: t["peak_mem_mb"] for t in tries if t["status"] == "ok" and t.get("peak_mem_mb")}
    if limit_mb is None or len(pts) < 2:
        return None
    (b0, m0), (b1, m1) = sorted(pts.items())[-2:]
    slope = (m1 - m0) / (b1 - b0)
    if slope <= 0:
        return None
    return int(b1 + (limit_mb - m1) // slope)


def _try_summary(row: dict, seconds: float, warmup: int) -> dict:
    status = "ok" if row["status"] == "ok" else ("oom" if row.get("oom") else "error")
    step_s = None if row["ms_median"] is None else row["ms_median"] * (row["steps"] + warmup) / 1000.0
    return {"batch": row["batch"], "status": status, "ms_median": row["ms_median"],
            "tokens_per_s": row["tokens_per_s"], "peak_mem_mb": row["peak_mem_mb"], "steps": row["steps"],
            "loss_last": row["loss_last"], "seconds": seconds, "step_s": step_s,
            "error": (row["error"] or None) and row["error"][:300]}


def device_memory_mb(s: BenchSettings) -> Optional[float]:
    """The limit the search runs against: ``--fake-mem-limit-mb``, else the CUDA device's total memory."""
    if s.fake_mem_limit_mb is not None:
        return float(s.fake_mem_limit_mb)
    if s.device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**20
    return None


def run_max_batch_search(name: str, s: BenchSettings, first_row: Optional[dict], vocab: int,
                         on_update: Optional[Callable[[dict], None]] = None, first_seconds: float = 0.0) -> dict:
    """``--max-batch-search`` for row ``name``: each try is a fresh ``measure`` at that batch (one warm-up,
    ``search_steps`` timed steps), freed completely before the next. ``first_row`` is the row already
    measured at ``s.batch`` (the start)."""
    limit = device_memory_mb(s)
    rows: dict[int, dict] = {}
    out: dict[str, Any] = {k: None for k in SEARCH_FIELDS}
    out.update(row=name, start=s.batch, cap=s.max_batch_cap, resolution=s.search_resolution,
               budget_s=s.search_seconds, status="running", limit_mb=limit, tries=[],
               gradient_checkpointing=s.gradient_checkpointing,
               try_steps=f"1 warm-up + {s.search_steps} timed (the start: the row's own)")

    def allocated() -> Optional[int]:
        if s.device != "cuda":
            return None
        import torch

        gc.collect()
        return torch.cuda.memory_allocated()

    def try_batch(b: int) -> dict:
        sb = dataclasses.replace(s, batch=b, warmup=1, steps=s.search_steps, profile_dir=None, rounds=1)
        print(f"[bench] max-batch search {name}: batch {b} ...", file=sys.stderr, flush=True)
        before = allocated()
        t0 = time.perf_counter()
        batch = _make_batch(sb, vocab)
        row = measure(name, sb, batch, profile=False)
        del batch
        seconds = time.perf_counter() - t0
        rows[b] = row
        t = _try_summary(row, seconds, 1)
        after = allocated()
        # memory a try left allocated would shrink every later try: made visible, not hidden
        t["leftover_mb"] = None if before is None else (after - before) / 2**20
        return t

    def on_try(t: dict) -> None:
        out["tries"].append(t)
        out["predicted_max_batch"] = _linear_max_batch(out["tries"], limit)
        if on_update is not None:
            on_update(out)

    if name == "ds-zero3":
        out["note"] = ("ZeRO-3: DeepSpeed 0.19.8 keeps each engine's module alive after engine.destroy() "
                       "(partition_parameters.Init / PartitionedParameterCoordinator refer to it; seen on CPU), "
                       "so later tries carry earlier tries' weights: a lower bound; see leftover_mb")
    first = None
    if first_row is not None:
        rows[s.batch] = first_row
        first = _try_summary(first_row, first_seconds, s.warmup * s.rounds)
    res = search_max_batch(try_batch, s.batch, s.max_batch_cap, s.search_resolution, s.search_seconds, first=first,
                           on_try=on_try)
    best_row = rows.get(res["max_batch"]) if res["max_batch"] else None
    out.update(status=res["status"], max_batch=res["max_batch"], first_failing_batch=res["first_failing_batch"],
               failure=res["failure"], elapsed_s=res["elapsed_s"],
               best=best_row)
    out["predicted_max_batch"] = _linear_max_batch(out["tries"], limit)
    if on_update is not None:
        on_update(out)
    return out


# =============================================================================================== eval benchmark
def _eval_examples(task: str, n: int) -> tuple[list[str], list[str], list[str]]:
    """(n evaluation sources, training sources, training targets) of ``task`` from the shipped sample.

    Read with the loader's row-level functions, not ``load_task_splits``: no ``datasets`` needed (the GPU
    machine may lack it). Evaluation rows are the official dev/validation file's, repeated up to ``n``.
    """
    from .data.loading import read_local_split, resolve_local_files
    from .data.sample import sample_data_dir
    from .data.tasks import format_source, get_task, label_to_target

    spec = get_task(task)
    files = resolve_local_files(spec, sample_data_dir())
    train_origin = "train"
    eval_origin = next(o for o in files if o != train_origin)
    pool = [format_source(spec, row) for row in read_local_split(spec, files[eval_origin])]
    train_rows = read_local_split(spec, files[train_origin])
    sources = [pool[i % len(pool)] for i in range(n)]
    targets = [label_to_target(spec, r["label"]) for r in train_rows]
    return sources, [format_source(spec, r) for r in train_rows], targets


def run_eval(s: BenchSettings) -> dict:
    """Rank classification vs greedy generation on the same examples, same model (HyperFormer++)."""
    import torch

    from .data.tasks import get_task
    from .data.tokenization import default_tokenizer
    from .training.evaluate import generate, rank_classify

    spec = get_task(s.eval_task)
    if spec.is_regression:
        raise ValueError(f"--eval-task {s.eval_task}: rank classification needs a classification task")
    labels = list(spec.label_strings())
    tok = default_tokenizer()
    sources, train_src, train_tgt = _eval_examples(s.eval_task, s.eval_n)
    model = _hyperscale_model(s, "hyperformer++")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, autocast = _prepare_plain(model, trainable, s)
    # a few steps on the task's training split teach the random-weight model the label strings, so that
    # generation produces valid labels and the agreement rate means something
    fit_losses = []
    if s.eval_train_steps > 0:
        lr_boost = 10.0
        for group in opt.opt.param_groups:
            group["lr"] *= lr_boost
        bs = s.eval_batch
        for i in range(s.eval_train_steps):
            idx = [(i * bs + j) % len(train_src) for j in range(bs)]
            enc = tok([train_src[j] for j in idx], max_length=s.eval_max_source_length, truncation=True,
                      padding=True, return_tensors="pt")
            lab = tok([train_tgt[j] for j in idx], padding=True, return_tensors="pt")
            lab_ids = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100).to(s.device)
            opt.zero_grad()
            with autocast():
                out = model(input_ids=enc["input_ids"].to(s.device), attention_mask=enc["attention_mask"].to(s.device),
                            labels=lab_ids, task_ids=s.eval_task)
            out.loss.backward()
            opt.step()
            fit_losses.append(float(out.loss.detach()))
    model.eval()
    dev = torch.device(s.device)

    def timed(fn: Callable[[list[str]], list[str]]) -> tuple[list[str], float]:
        fn(sources[: s.eval_batch])  # warm-up
        _sync(s.device)
        t0 = time.perf_counter()
        preds: list[str] = []
        for i in range(0, len(sources), s.eval_batch):
            preds.extend(fn(sources[i:i + s.eval_batch]))
        _sync(s.device)
        return preds, time.perf_counter() - t0

    with torch.no_grad(), autocast():
        rank_preds, rank_s = timed(lambda xs: rank_classify(model, tok, s.eval_task, xs, labels, dev,
                                                            s.eval_max_source_length))
        gen_preds, gen_s = timed(lambda xs: generate(model, tok, s.eval_task, xs, dev, s.eval_max_source_length,
                                                     spec.max_target_length + 1))
    gen_preds = [p.strip() for p in gen_preds]
    valid = [i for i, p in enumerate(gen_preds) if p in labels]
    agree = sum(gen_preds[i] == rank_preds[i] for i in valid)
    n = len(sources)
    result = {
        "task": s.eval_task, "n": n, "batch": s.eval_batch, "labels": labels, "model": "hyperformer++",
        "max_new_tokens": spec.max_target_length + 1, "fit_steps": s.eval_train_steps,
        "fit_loss_first": fit_losses[0] if fit_losses else None,
        "fit_loss_last": fit_losses[-1] if fit_losses else None,
        "rank_ms_per_example": 1000.0 * rank_s / n, "generate_ms_per_example": 1000.0 * gen_s / n,
        "speedup": gen_s / rank_s if rank_s > 0 else None,
        "valid_generations": len(valid), "valid_rate": len(valid) / n,
        "agreement_on_valid": agree / len(valid) if valid else None,
        "timing_includes": "tokenization of the batch (both modes)",
    }
    return result


# =============================================================================================== report
def environment(s: BenchSettings) -> dict:
    import torch
    import transformers

    env: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    for mod in ("deepspeed", "peft"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    if s.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(result: dict) -> str:
    st, rows = result["settings"], result["rows"]
    env = result["environment"]
    head = (f"hyperscale bench: {st['backbone']} on {st['device']} ({env.get('gpu') or env.get('cpu')}), "
            f"{st['precision']}, plain-mode {st['plain_mode']}, batch {st['batch']}, "
            f"{st['src_len']}+{st['tgt_len']} tokens, "
            f"median of {st['steps']} steps after {st['warmup']} warm-up")
    cols = ("configuration", "runner", "ms/step", "tokens/s", "peak MB", "x floor", "x plain", "trainable", "note")
    if st["rounds"] > 1:
        head += f", {st['rounds']} interleaved rounds pooled"
    if st.get("gradient_checkpointing"):
        head += ", activation checkpointing (HF, non-reentrant) on every row"
    if st.get("fake_mem_limit_mb") is not None:
        head += f", simulated memory limit {st['fake_mem_limit_mb']:g} MB"
    if rows:
        lines = [head, "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    else:
        lines = [f"hyperscale bench: {st['backbone']} on {st['device']} ({env.get('gpu') or env.get('cpu')}), "
                 f"{st['precision']}, plain-mode {st['plain_mode']}"]
    for r in rows:
        runner = r["runner"] or ""
        if r["zero_stage"] is not None:
            runner += f" ZeRO-{r['zero_stage']}"
        note = r["note"] or ""
        if r["status"] == "error":
            note = "ERROR " + (r["error"] or "")[:160]
        elif r["status"] == "skipped":
            note = "skipped: " + note
        if st.get("gradient_checkpointing") and r["status"] == "ok" and not r.get("gradient_checkpointing"):
            note = "checkpointing NOT active; " + note
        lines.append("| " + " | ".join([
            r["name"], runner, _fmt(r["ms_median"], ".1f"), _fmt(r["tokens_per_s"], ",.0f"),
            _fmt(r["peak_mem_mb"], ",.0f"), _fmt(r["ratio_to_floor"], ".2f"), _fmt(r["ratio_to_plain"], ".2f"),
            _fmt(r["trainable_params"], ","), note.replace("|", "/")]) + " |")
    for sr in result.get("max_batch_search") or []:
        lines.append(format_search(sr))
    ev = result.get("eval")
    if ev:
        if "error" in ev:
            lines.append(f"eval: ERROR {ev['error']}")
        else:
            agree = "-" if ev["agreement_on_valid"] is None else f"{100 * ev['agreement_on_valid']:.1f} %"
            lines.append(
                f"eval ({ev['task']}, {ev['n']} examples, batch {ev['batch']}): rank classification "
                f"{ev['rank_ms_per_example']:.2f} ms/example, generation {ev['generate_ms_per_example']:.2f} "
                f"ms/example ({_fmt(ev['speedup'], '.1f')}x); valid generations {ev['valid_generations']}/{ev['n']}, "
                f"agreement with rank classification on those {agree}")
    return "\n".join(lines)


def format_search(sr: dict) -> str:
    """One line per largest-batch search: the largest batch that fit, its timing and memory, the bracket."""
    if not sr:
        return "max batch: not started"
    name = sr.get("row", "?")
    if sr.get("status") == "error" and not sr.get("tries"):
        return f"max batch ({name}): ERROR {str(sr.get('error'))[:200]}"
    tries = sr.get("tries") or []
    fits = ", ".join(f"{t['batch']}{'' if t['status'] == 'ok' else ' ' + t['status'].upper()}" for t in tries)
    lim = sr.get("limit_mb")
    text = f"max batch ({name}, {sr.get('status')}"
    text += f", limit {lim:,.0f} MB" if lim else ""
    text += f", {sr['elapsed_s']:.0f} s" if sr.get("elapsed_s") is not None else ""
    text += "): "
    best = sr.get("best")
    if sr.get("max_batch") and best:
        text += (f"{sr['max_batch']} fits: {_fmt(best.get('ms_median'), '.1f')} ms/step, "
                 f"{_fmt(best.get('tokens_per_s'), ',.0f')} tokens/s, {_fmt(best.get('peak_mem_mb'), ',.0f')} MB peak")
    elif sr.get("status") == "running":
        text += "running"
    else:
        text += "no batch fits"
    if sr.get("first_failing_batch"):
        text += f"; {sr['first_failing_batch']} does not ({sr.get('failure')})"
    elif sr.get("status") == "cap":
        text += f"; cap {sr.get('cap')} reached"
    if sr.get("predicted_max_batch") is not None:
        text += f"; linear extrapolation of the peaks: {sr['predicted_max_batch']:,}"
    return text + f"; tries: {fits}"


def run_benchmark(s: BenchSettings, on_update: Optional[Callable[[dict], None]] = None) -> dict:
    """Measure every configuration of ``s`` (and the eval benchmark); ``on_update(result)`` is called
    after each one with the result so far (ratios filled in), e.g. to keep a JSON file current."""
    import torch

    if s.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if s.threads:
        torch.set_num_threads(s.threads)
    rows: list[dict] = []
    result: dict[str, Any] = {
        "settings": dataclasses.asdict(s), "environment": environment(s), "rows": rows,
        "memory_metric": ("cuda max_memory_allocated" if s.device == "cuda"
                          else "cpu sampled peak RSS minus RSS before build"),
    }
    if s.configs:
        from .modeling.presets import preset_config

        vocab = preset_config(s.preset).vocab_size
        batch = _make_batch(s, vocab)
        _process_warmup(s, batch)
        seconds: dict[str, float] = {}
        for rnd in range(s.rounds):
            # several rounds interleave the configurations: slow drifts of a shared machine's load
            # then hit every configuration alike
            for i, name in enumerate(s.configs):
                print(f"[bench] {name} (round {rnd + 1}/{s.rounds}) ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                row = measure(name, s, batch, profile=rnd == 0)
                seconds[name] = time.perf_counter() - t0
                if rnd == 0:
                    rows.append(row)
                else:
                    rows[i] = _merge_round(rows[i], row, s)
                add_ratios(rows)
                if on_update is not None:
                    on_update(result)
        if s.max_batch_search:
            del batch
            gc.collect()
            searches: list[dict] = []
            result["max_batch_search"] = searches
            for i, name in enumerate(s.configs):
                if not name.startswith("ds-zero"):
                    continue
                searches.append({})

                def update(partial: dict, _k: int = len(searches) - 1) -> None:
                    searches[_k] = partial
                    if on_update is not None:
                        on_update(result)

                print(f"[bench] max-batch search {name} from batch {s.batch} ...", file=sys.stderr, flush=True)
                try:
                    run_max_batch_search(name, s, rows[i], vocab, update, first_seconds=seconds.get(name, 0.0))
                except Exception as e:  # the timed rows above must survive a failing search
                    traceback.print_exc(file=sys.stderr)
                    searches[-1] = dict(searches[-1] or {"row": name}, status="error",
                                        error=f"{type(e).__name__}: {e}"[:2000])
                    if on_update is not None:
                        on_update(result)
    if s.eval:
        print("[bench] eval ...", file=sys.stderr, flush=True)
        try:
            result["eval"] = run_eval(s)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            result["eval"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        if on_update is not None:
            on_update(result)
    return result


# =============================================================================================== CLI
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backbone", default=None, help="preset name (default: t5-base on cuda, t5-tiny on cpu)")
    p.add_argument("--batch", type=int, default=None, help="examples per step (default: 64 on cuda, 8 on cpu)")
    p.add_argument("--src-len", type=int, default=128, help="source tokens per example")
    p.add_argument("--tgt-len", type=int, default=8, help="target tokens per example")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--plain-mode", choices=("master", "amp"), default="master",
                   help="bf16 plain-loop rows: bf16 model + fp32 master weights (as DeepSpeed), or fp32 trainable "
                        "weights + autocast")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (median reported)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the configuration list this many times, interleaved, pooling the timed steps")
    p.add_argument("--only", default=None, help=f"comma-separated configurations out of: {', '.join(ALL_CONFIGS)}")
    p.add_argument("--zero-stages", default="0,2,3", help="ZeRO stages of the default ds-zeroN rows")
    p.add_argument("--tasks", default=None, help=f"task names of the model (default: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--task-mix", choices=("same", "mixed"), default="same",
                   help="one task per batch (the trainer's default sampler) or every task in every batch")
    p.add_argument("--reduction-factor", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (CPU); 1 gives stable numbers on a shared machine")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="HF activation checkpointing (non-reentrant) on the backbone of every row")
    p.add_argument("--build-dtype", choices=("auto", "fp32"), default="auto",
                   help="auto: construct the backbone and adapters directly in the compute dtype (bf16 under "
                        "--precision bf16), on the device; fp32: construct in fp32 and cast (the trainer's path)")
    p.add_argument("--no-process-warmup", action="store_true",
                   help="skip the untimed floor step before the first row (saves a big backbone's extra build)")
    p.add_argument("--max-batch-search", action="store_true",
                   help="after timing, search the largest batch that fits for each ds-zeroN row: doubling from "
                        "--batch, then bisection; out-of-memory means 'does not fit'")
    p.add_argument("--max-batch-cap", type=int, default=4096, help="largest batch the search tries")
    p.add_argument("--search-seconds", type=float, default=300.0,
                   help="time budget of each search (no try starts that would likely end after it)")
    p.add_argument("--search-steps", type=int, default=2, help="timed steps per search try (after one warm-up)")
    p.add_argument("--search-resolution", type=int, default=1,
                   help="stop bisecting when largest fit and smallest failure are this close")
    p.add_argument("--fake-mem-limit-mb", type=float, default=None,
                   help="simulate a device of this many MB: a row whose measured peak exceeds it fails with a "
                        "simulated out-of-memory error (CPU: sampled RSS; CUDA: max_memory_allocated)")
    p.add_argument("--profile-dir", default=None, help="also profile each configuration (torch.profiler) into DIR")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--json-out", default=None, help="write the result as JSON here")
    p.add_argument("--table-out", default=None, help="also write the table (markdown) here")
    p.add_argument("--eval", action="store_true",
                   help="also run the eval benchmark (rank classification vs generation)")
    p.add_argument("--eval-only", action="store_true", help="run only the eval benchmark")
    p.add_argument("--eval-task", default="rte")
    p.add_argument("--eval-n", type=int, default=64, help="examples to predict")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--eval-train-steps", type=int, default=30,
                   help="steps fitting the random-weight model to the task first, so generation yields labels")
    return p


def build_arg_parser(prog: str = "hyperscale bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    return add_arguments(p)


def run_from_args(args: argparse.Namespace) -> int:
    s = settings_from_args(args)

    def write(result: dict) -> None:
        if args.json_out:
            out = Path(args.json_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, out)
        if args.table_out:
            Path(args.table_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table_out).write_text(format_table(result) + "\n")

    result = run_benchmark(s, on_update=write)
    write(result)
    print(format_table(result), flush=True)
    # with --max-batch-search an out-of-memory row at the start batch is a search result, not a failure
    failed = [r["name"] for r in result["rows"] if r["status"] == "error" and not (s.max_batch_search and r["oom"])]
    if "error" in (result.get("eval") or {}):
        failed.append("eval")
    failed += [f"max-batch search {sr.get('row')}" for sr in result.get("max_batch_search") or []
               if sr.get("status") == "error"]
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_from_args(build_arg_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
