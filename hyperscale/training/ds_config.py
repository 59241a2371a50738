"""DeepSpeed configuration: a shipped template (``ds_configs/``) filled from the run config.

Everything the run config decides (batch sizes, accumulation, clipping, optimizer, scheduler,
precision, ZeRO stage) is written by the trainer, so the two never disagree. A user's own JSON
(``deepspeed.config``) is accepted; values it sets explicitly must agree with the run config.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from .config import AUTO, ConfigError, RunConfig
from .geometry import batch_geometry

logger = logging.getLogger(__name__)

DS_CONFIG_DIR = Path(__file__).resolve().parents[1] / "ds_configs"


def template_path(cfg: RunConfig) -> Path:
    stage = cfg.deepspeed.zero_stage
    name = f"zero3_offload_{cfg.train.precision}.json" if cfg.deepspeed.offload else f"zero{stage}_{cfg.train.precision}.json"
    return DS_CONFIG_DIR / name


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found; shipped templates are in {DS_CONFIG_DIR}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from None


def _fill(node: dict, key: str, value: Any, where: str, src: str) -> None:
    """Set ``node[key]``; a value the user wrote (not "auto") must equal the run config's."""
    current = node.get(key, "auto")
    if current == "auto":
        node[key] = value
    elif current != value and not (isinstance(value, float) and isinstance(current, (int, float))
                                   and abs(float(current) - value) <= 1e-12 * max(1.0, abs(value))):
        raise ConfigError(f"{src}: '{where}' is {current!r} but the run config implies {value!r}; "
                          f"set it to \"auto\" (the trainer fills it) or change the run config")


def build_ds_config(cfg: RunConfig, world_size: int) -> dict:
    """The DeepSpeed config of ``cfg`` on ``world_size`` ranks. ``deepspeed.zero_stage`` must be a number (the
    trainer resolves ``auto`` first: :func:`hyperscale.training.geometry.resolve_auto`); an ``auto`` micro-batch
    takes the largest divisor of the per-rank batch up to the CPU cap (:func:`geometry.batch_geometry`)."""
    if cfg.deepspeed.zero_stage == AUTO:
        raise ConfigError("deepspeed.zero_stage=auto is resolved by the trainer before the DeepSpeed config is built "
                          "(hyperscale.training.geometry.resolve_auto); pass a stage 0-3 here")
    geometry = batch_geometry(cfg, world_size)
    t = dataclasses.replace(cfg.train, micro_batch_size=geometry.micro_batch_size)
    accum = geometry.accumulation
    src_path = Path(cfg.deepspeed.config) if cfg.deepspeed.config else template_path(cfg)
    src = str(src_path)
    ds = copy.deepcopy(_load_json(src_path))
    _fill(ds, "train_batch_size", t.global_batch_size, "train_batch_size", src)
    _fill(ds, "train_micro_batch_size_per_gpu", t.micro_batch_size, "train_micro_batch_size_per_gpu", src)
    _fill(ds, "gradient_accumulation_steps", accum, "gradient_accumulation_steps", src)
    _fill(ds, "gradient_clipping", float(t.grad_clip), "gradient_clipping", src)
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}})
    if str(opt.get("type", "")).lower() not in ("adamw", "adam"):
        raise ConfigError(f"{src}: optimizer.type {opt.get('type')!r} is not supported; hyperscale trains with AdamW")
    p = opt.setdefault("params", {})
    _fill(p, "lr", float(t.lr), "optimizer.params.lr", src)
    _fill(p, "betas", [t.adam_beta1, t.adam_beta2], "optimizer.params.betas", src)
    _fill(p, "eps", float(t.adam_eps), "optimizer.params.eps", src)
    _fill(p, "weight_decay", float(t.weight_decay), "optimizer.params.weight_decay", src)
    sched = ds.setdefault("scheduler", {"type": "WarmupDecayLR", "params": {"warmup_type": "linear"}})
    sp = sched.setdefault("params", {})
    _fill(sp, "warmup_max_lr", float(t.lr), "scheduler.params.warmup_max_lr", src)
    _fill(sp, "warmup_num_steps", max(1, min(t.warmup_steps, t.max_steps)), "scheduler.params.warmup_num_steps", src)
    _fill(sp, "total_num_steps", t.max_steps, "scheduler.params.total_num_steps", src)
    zero = ds.setdefault("zero_optimization", {})
    _fill(zero, "stage", cfg.deepspeed.zero_stage, "zero_optimization.stage", src)
    # the communication knobs of the stages that use them (ZeRO-3 gathers parameters by its own prefetch buckets)
    knobs = {1: ("allgather_bucket_size", "reduce_bucket_size", "overlap_comm"),
             2: ("allgather_bucket_size", "reduce_bucket_size", "overlap_comm"),
             3: ("reduce_bucket_size", "overlap_comm")}.get(cfg.deepspeed.zero_stage, ())
    for key in knobs:
        _fill(zero, key, getattr(cfg.deepspeed, key), f"zero_optimization.{key}", src)
    bf16 = ds.get("bf16", {}).get("enabled", False)
    fp16 = ds.get("fp16", {}).get("enabled", False)
    implied = "bf16" if bf16 else "fp16" if fp16 else "fp32"
    if implied != t.precision:
        raise ConfigError(f"{src} enables {implied} but train.precision={t.precision}; make them agree")
    if implied == "bf16":
        # train.nonfinite relies on DeepSpeed leaving out a step whose gradients are inf/NaN (its "overflow");
        # for bf16 under ZeRO 1-2 that check is this switch
        _fill(ds["bf16"], "check_grad_overflow", True, "bf16.check_grad_overflow", src)
    if cfg.deepspeed.zero_stage == 0 and implied == "bf16":
        # DeepSpeed has no fp32 gradient accumulation for bf16 without ZeRO (it refuses: "unsupported mix of
        # model_dtype=torch.bfloat16 and grad_accum_dtype=torch.float32"); its ZeRO-0 bf16 path keeps fp32
        # master weights and accumulates the micro-batches' gradients in bf16. ZeRO 1-3 accumulate in fp32.
        if ds.get("data_types", {}).get("grad_accum_dtype") in ("fp32", "float32", "float"):
            del ds["data_types"]["grad_accum_dtype"]  # a user's JSON asked for it: DeepSpeed cannot
        if accum > 1:
            logger.warning(f"ZeRO-0 with bf16 accumulates gradients in bf16 over {accum} micro-batches; "
                           "deepspeed.zero_stage=1 (or higher) accumulates them in fp32")
    ds["steps_per_print"] = ds.get("steps_per_print", 10**9)
    return ds
