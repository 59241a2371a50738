"""The rows: building each configuration (floor, floor-compiled, the plain-loop methods, LoRA, HyperFormer++ under
the trainer's own DeepSpeed engine), timing its steps (:func:`measure`), pooling interleaved rounds and
profiling."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.profiler

from ..modeling.compile import prepare_for_compile
from ..modeling.model import HyperscaleModel, load_backbone
from ..training import engine as trainer_engine  # used through the module: the trainer's functions, as patched
from ..training.config import RunConfig, load_config
from ..training.ds_config import build_ds_config
from .runtime import (
    SimulatedOutOfMemoryError,
    _RssSampler,
    _sync,
    ensure_single_process_dist,
    is_oom,
    memory_metric,
)
from .settings import BenchSettings

ROW_FIELDS = ("name", "method", "runner", "zero_stage", "precision", "status", "ms_median", "ms_mean", "ms_min",
              "ms_max", "steps", "tokens_per_s", "peak_mem_mb", "mem_metric", "ratio_to_floor", "ratio_to_plain",
              "trainable_params", "total_params", "loss_first", "loss_last", "note", "error", "rounds",
              "times_ms", "batch", "gradient_checkpointing", "oom")


# =============================================================================================== building blocks
def build_dtype(s: BenchSettings):
    """The dtype the backbone and adapters are constructed in (see ``--build-dtype``)."""
    if s.build_dtype == "fp32" or s.precision == "fp32":
        return torch.float32
    return torch.bfloat16


@contextlib.contextmanager
def build_context(s: BenchSettings):
    """Construct modules directly in ``build_dtype(s)`` (default-dtype switch) and, on CUDA, directly on the
    device: a t5-v1_1-xxl backbone is then 22 GB of bf16 on the GPU, never 44 GB of fp32 on the host."""
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
    if not s.gradient_checkpointing:
        return
    with warnings.catch_warnings():  # transformers 5.2x renames it (activation_checkpointing_enable)
        warnings.simplefilter("ignore", FutureWarning)
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def checkpointing_active(backbone) -> bool:
    return any(bool(getattr(m, "gradient_checkpointing", False)) for m in backbone.modules())


def _make_batch(s: BenchSettings, vocab: int) -> dict:
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
    return trainer_engine.per_example_loss(logits, labels).mean()


def _run_config() -> RunConfig:
    """The run ``hyperscale train`` runs with no arguments (the embedded ``configs/default.yaml``): the benchmark's
    optimizer, schedule and DeepSpeed settings are the trainer's default run's, not a second set of defaults."""
    return load_config(None)


class _PlainOptimizer:
    """AdamW + clipping for the plain-loop rows, in the precision layout of ``--plain-mode``."""

    def __init__(self, params: list, s: BenchSettings, master: bool):
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


def _hyperscale_model(s: BenchSettings, method: str):
    backbone = _new_backbone(s)
    with build_context(s):  # the adapter bank: same dtype and device as the backbone
        model = HyperscaleModel.from_backbone(backbone, s.tasks, method=method, reduction_factor=s.reduction_factor)
    enable_checkpointing(model.backbone, s)
    return model.to(s.device)


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


def _build_floor(s: BenchSettings, batch: dict, compiled: bool = False) -> _Built:
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


def compiled_task_ids(batch: dict, device: Any) -> torch.Tensor:
    """Task ids as the trainer hands them to a compiled model: on the device, 0-dim for a single-task batch."""
    ids = batch["task_ids"]
    same = bool((ids == ids[0]).all())
    return (ids[0] if same else ids).to(device)


def _build_method(s: BenchSettings, batch: dict, method: str, compiled: bool = False) -> _Built:
    model = _hyperscale_model(s, method)
    model.train()
    if compiled:  # in place, as the trainer's engine.compile does (nn.Module.compile)
        prepare_for_compile(model)
        model.compile(backend=s.compile_backend)
        batch = {**batch, "task_ids": compiled_task_ids(batch, s.device)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, autocast = _prepare_plain(model, trainable, s)
    n_tr, n_tot = _count(model)
    return _Built(_plain_step(model, opt, autocast, batch, model.bank is not None), method, "plain", n_tr, n_tot,
                  keep=[model, opt], checkpointing=checkpointing_active(model.backbone),
                  note=f"torch.compile(model, backend={s.compile_backend}), in place" if compiled else "")


def _build_lora(s: BenchSettings, batch: dict) -> _Built:
    import peft  # optional (the "peft" extra): measure skips this row when it is not importable

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
    return build_ds_config(bench_run_config(s, stage), 1)


def bench_run_config(s: BenchSettings, stage: int) -> Any:
    """The run config a trainer run of this benchmark's shape would have (world size 1, no accumulation)."""
    cfg = _run_config()
    train = dataclasses.replace(cfg.train, global_batch_size=s.batch, micro_batch_size=s.batch, precision=s.precision,
                                max_steps=max(cfg.train.max_steps, s.warmup + s.steps + s.profile_steps + 1))
    return dataclasses.replace(cfg, train=train, deepspeed=dataclasses.replace(cfg.deepspeed, zero_stage=stage))


def _build_deepspeed(s: BenchSettings, batch: dict, stage: int, compiled: bool = False) -> _Built:
    """HyperFormer++ under the trainer's own engine (``training.engine.build_engine``: same DeepSpeed config,
    trainable-only parameters, checkpoint filter, ZeRO-3 persistence) and the trainer's loss."""
    ensure_single_process_dist(s.device)
    # built on the device in the compute dtype (--build-dtype auto): the engine's bf16 cast is then a
    # no-op; --build-dtype fp32 hands it an fp32 module, as the trainer does, and the engine casts it
    model = _hyperscale_model(s, "hyperformer++")
    if compiled:
        prepare_for_compile(model)
    engine = trainer_engine.build_engine(model, trainer_ds_config(s, stage), torch.device(s.device),
                                         compile_backend=s.compile_backend if compiled else None)
    engine.train()
    forward_loss = trainer_engine.forward_loss
    task_ids = compiled_task_ids(batch, s.device) if compiled else batch["task_ids"]

    def step():
        loss, _ = forward_loss(engine, batch, task_ids)
        engine.backward(loss)
        engine.step()
        return loss

    n_tr, n_tot = _count(model)

    def cleanup():
        engine.destroy()

    return _Built(step, "hyperformer++", "deepspeed", n_tr, n_tot, zero_stage=stage, cleanup=cleanup,
                  keep=[model, engine], checkpointing=checkpointing_active(model.backbone),
                  note=f"engine.compile(backend={s.compile_backend}) (train.compile=true)" if compiled else "")


def _build(name: str, s: BenchSettings, batch: dict) -> _Built:
    if name == "floor":
        return _build_floor(s, batch)
    if name == "floor-compiled":
        return _build_floor(s, batch, compiled=True)
    if name in ("hyperformer++", "adapters", "finetune"):
        return _build_method(s, batch, name)
    if name == "hyperformer++-compiled":
        return _build_method(s, batch, "hyperformer++", compiled=True)
    if name.startswith("ds-zero") and name.endswith("-compiled"):
        return _build_deepspeed(s, batch, int(name.removeprefix("ds-zero").removesuffix("-compiled")), compiled=True)
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


# =============================================================================================== timing
def _empty_row(name: str, s: BenchSettings) -> dict:
    row = {k: None for k in ROW_FIELDS}
    row.update(name=name, precision=s.precision, status="ok", note="", batch=s.batch)
    return row


def _profile(name: str, built: _Built, s: BenchSettings) -> dict:
    """Profile ``s.profile_steps`` more steps (torch.profiler); write the op table to the profile dir and
    return per-step counts: ATen ops (the host-side dispatches), autograd backward nodes and, on CUDA,
    device kernels: eager T5 at benchmark sizes is bound by these counts, not by FLOPs."""
    activity = torch.profiler.ProfilerActivity
    acts = [activity.CPU] + ([activity.CUDA] if s.device == "cuda" else [])
    with torch.profiler.profile(activities=acts, record_shapes=False) as prof:
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


def _profile_or_error(name: str, built: _Built, s: BenchSettings) -> dict:
    try:
        return _profile(name, built, s)
    except Exception as e:  # a profiler failure must not cost the timings
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def _check_fake_limit(s: BenchSettings, peak_mb: Callable[[], float], when: str = "") -> None:
    """``--fake-mem-limit-mb``: a measured peak above the limit is a (simulated) out-of-memory error."""
    if s.fake_mem_limit_mb is not None and peak_mb() > s.fake_mem_limit_mb:
        raise SimulatedOutOfMemoryError(f"simulated out of memory: peak {peak_mb():.1f} MB > "
                                        f"--fake-mem-limit-mb {s.fake_mem_limit_mb:g}{when}")


def _timed_steps(built: _Built, s: BenchSettings, peak_mb: Callable[[], float]) -> tuple[list, list]:
    """``s.warmup`` untimed steps, then ``s.steps`` timed ones, each bracketed by device synchronisation:
    (seconds, losses) of the timed steps."""
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
        _check_fake_limit(s, peak_mb, f" after step {i + 1}")
    return times, losses


def _record_timings(row: dict, built: _Built, s: BenchSettings, times: list, losses: list, peak_bytes: float) -> None:
    row.update(
        method=built.method, runner=built.runner, zero_stage=built.zero_stage, trainable_params=built.trainable,
        total_params=built.total, loss_first=losses[0], loss_last=losses[-1], note=built.note,
        times_ms=[t * 1000.0 for t in times], rounds=1, gradient_checkpointing=built.checkpointing,
    )
    _set_stats(row, s)
    row.update(peak_mem_mb=peak_bytes / 2**20, mem_metric=memory_metric(s.device))
    if not all(math.isfinite(x) for x in losses):
        row["note"] = (row["note"] + "; " if row["note"] else "") + "non-finite loss"


def _record_failure(row: dict, e: Exception, name: str, s: BenchSettings, built: Optional[_Built],
                    peak_mb: Callable[[], float]) -> None:
    oom = is_oom(e)
    if oom:  # expected during a largest-batch search: one line, not a traceback
        print(f"[bench] {name} at batch {s.batch}: out of memory ({type(e).__name__}: {str(e)[:300]})",
              file=sys.stderr, flush=True)
    else:
        traceback.print_exc(file=sys.stderr)
    row.update(status="error", error=f"{type(e).__name__}: {e}"[:2000], oom=oom)
    try:  # how far it got: the peak up to the failure
        row.update(peak_mem_mb=peak_mb(), mem_metric=memory_metric(s.device))
    except Exception:  # pragma: no cover
        pass
    if built is not None:
        row.update(method=built.method, runner=built.runner, zero_stage=built.zero_stage,
                   gradient_checkpointing=built.checkpointing)


def _release(built: _Built) -> None:
    try:
        built.cleanup()
    except Exception:  # pragma: no cover
        traceback.print_exc(file=sys.stderr)
    built.keep.clear()


def measure(name: str, s: BenchSettings, batch: dict, profile: bool = True) -> dict:
    """Build configuration ``name``, time its steps, return its row (``status`` ok / skipped / error)."""
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
            times, losses = _timed_steps(built, s, peak_mb)
            if cuda:
                peak = torch.cuda.max_memory_allocated()
        _check_fake_limit(s, peak_mb)  # the sampler's last reading
        if s.profile_dir and profile:
            row["profile"] = _profile_or_error(name, built, s)
        _record_timings(row, built, s, times, losses, peak if cuda else sampler.peak - sampler.start_rss)
    except Exception as e:  # one failing configuration must not cost the others (a GPU run is not repeatable)
        _record_failure(row, e, name, s, built, peak_mb)
        del e  # its traceback holds the failed step's frames (activations): drop it before freeing memory
    finally:
        if built is not None:
            _release(built)
        del built  # its step closure holds the model, optimizer and engine
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if row["oom"] is None and row["status"] == "ok":
        row["oom"] = False
    if name.startswith("ds-zero") and row["runner"] is None:
        row.update(method="hyperformer++", runner="deepspeed",
                   zero_stage=int(name.removeprefix("ds-zero").removesuffix("-compiled")))
    return row


# =============================================================================================== rounds
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
        torch.cuda.empty_cache()


def run_rounds(s: BenchSettings, batch: dict, rows: list[dict], on_row: Callable[[], None]) -> dict[str, float]:
    """Measure every configuration of ``s`` into ``rows``, ``s.rounds`` times (a later round's row merged into
    the first's); ``on_row()`` after each measurement. Returns each configuration's seconds (its last round)."""
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
            on_row()
    return seconds
