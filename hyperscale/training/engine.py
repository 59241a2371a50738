"""The one place a DeepSpeed engine is built, and the one training loss.

``hyperscale train`` and ``hyperscale bench`` both call :func:`build_engine` and :func:`forward_loss`,
so a benchmark row times exactly the engine and the objective the trainer runs:

- the DeepSpeed config from the run config (:func:`hyperscale.training.ds_config.build_ds_config`);
- under ``deepspeed.build_sharded`` the backbone arrives already in ZeRO-3 shards
  (:mod:`hyperscale.training.sharded`); the modules built outside them take the engine's dtype;
- ``deepspeed.initialize`` over the trainable parameters only;
- checkpoints leave out every name of a frozen parameter, tied aliases included
  (:func:`_exclude_frozen_aliases`);
- under ZeRO-3 the hypernetwork and task embeddings stay whole on every rank (:func:`_persist_bank`).
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..modeling.model import HyperscaleModel


def build_engine(model: HyperscaleModel, ds_config: dict, device: torch.device, *,
                 sharded: bool = False, compile_backend: Optional[str] = None) -> Any:
    """``deepspeed.initialize`` over ``model``'s trainable parameters, with hyperscale's checkpoint filter
    and ZeRO-3 persistence. ``sharded``: the backbone was built by
    :func:`hyperscale.training.sharded.build_sharded_backbone` (already partitioned, not moved). ``compile_backend``: compile the module's forward in place with DeepSpeed's
    ``engine.compile`` (``nn.Module.compile``: parameter names and checkpoints stay those of the eager model)."""
    import deepspeed  # heavy; the package imports without it for export and inference

    if not sharded:
        model.to(device)
    else:
        _cast_unpartitioned(model, ds_config)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    _exclude_frozen_aliases(engine)
    if engine.zero_optimization_stage() == 3 and model.bank is not None:
        _persist_bank(engine, model)
    if compile_backend:
        engine.compile(backend=compile_backend)
    return engine


def engine_dtype(ds_config: dict) -> torch.dtype:
    """The dtype DeepSpeed keeps the module's weights in under ``ds_config``."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def _cast_unpartitioned(model: torch.nn.Module, ds_config: dict) -> None:
    """A sharded build leaves DeepSpeed's cast to us: with some parameters already partitioned (the backbone,
    built under ``zero.Init`` in the engine's dtype), ``deepspeed.initialize`` casts nothing, so the modules
    built outside it (the hypernetwork bank, fp32) would meet the backbone's bf16 layer norms in one
    optimizer partition (DeepSpeed's ``defragment`` asserts one dtype). Cast them to the engine's dtype."""
    dtype = engine_dtype(ds_config)
    for p in model.parameters():
        if not hasattr(p, "ds_id") and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process (Dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def eager_context(engine: Any) -> Any:
    """Evaluation and generation run eagerly even on a compiled engine (new shapes and eval mode would
    otherwise compile more graphs, for work that runs once per evaluation)."""
    if getattr(engine, "is_compiled", False):
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()


def _exclude_frozen_aliases(engine: Any) -> None:
    """DeepSpeed's ``exclude_frozen_parameters`` drops frozen parameters by their first name only, so
    tied aliases of frozen weights (T5's ``encoder.embed_tokens``, ``decoder.embed_tokens``,
    ``lm_head``) still land in every checkpoint: for t5-base that is 3 x 95 MB of backbone. Drop them
    too, by every name a frozen parameter has."""
    original = engine.module_state_dict

    def module_state_dict(*args: Any, exclude_frozen_parameters: bool = False, **kwargs: Any) -> dict:
        sd = original(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        if exclude_frozen_parameters:
            for name in excluded_parameter_names(engine.module):
                sd.pop(name, None)
        return sd

    engine.module_state_dict = module_state_dict


def excluded_parameter_names(module: torch.nn.Module) -> set[str]:
    """Every name (aliases included) of a frozen parameter: what a checkpoint leaves out."""
    return {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _persist_bank(engine: Any, model: HyperscaleModel) -> None:
    """ZeRO-3 shards the frozen backbone; the hypernetwork and task embeddings run at every layer, so
    keep them whole on every rank (DeepSpeed re-gathers persistent parameters after each step)."""
    persistent = getattr(engine.optimizer, "persistent_parameters", None)
    if persistent is None:
        return
    known = {id(p) for p in persistent}
    for p in model.bank.parameters():
        if hasattr(p, "ds_persist") and id(p) not in known:
            p.ds_persist = True
            persistent.append(p)
    if persistent:
        persistent[0].all_gather(persistent)


def persistent_parameter_names(engine: Any) -> set[str]:
    """Names of the parameters ZeRO-3 keeps whole on every rank (empty below stage 3)."""
    persistent = getattr(engine.optimizer, "persistent_parameters", None) or []
    ids = {id(p) for p in persistent}
    return {name for name, p in engine.module.named_parameters() if id(p) in ids}


# ---------------------------------------------------------------------------------------------- loss
def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's mean token cross-entropy (labels of -100 ignored), in fp32."""
    logits = logits.float()
    tok = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                          reduction="none").view(labels.shape)
    n_tok = (labels != -100).sum(1).clamp(min=1)
    return tok.sum(1) / n_tok


def forward_loss(engine: Any, batch: dict, task_ids: Optional[Any] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective: the mean over examples of each example's mean token loss, the same for any
    world size, micro-batch size or padding. Returns (loss, per-example losses); no host synchronisation.
    ``engine`` is a DeepSpeed engine or a bare :class:`HyperscaleModel`; ``task_ids`` stay on the host."""
    labels = batch["labels"]
    model = getattr(engine, "module", engine)
    out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 decoder_input_ids=model.backbone._shift_right(labels),
                 task_ids=task_ids if model.bank is not None else None)
    per_example = per_example_loss(out.logits, labels)
    return per_example.mean(), per_example


# ------------------------------------------------------------------------------- learning-rate schedule
def schedule_state(engine: Any, base_lr: float) -> dict:
    """The schedule the engine's WarmupDecayLR runs, as the TrainState records it (empty for another
    scheduler): ``base_lr`` is ``train.lr``, ``peak_lr`` the peak the decay line is drawn from."""
    sched = getattr(engine, "lr_scheduler", None)
    if not _is_warmup_decay(sched):
        return {}
    return {"base_lr": float(base_lr), "peak_lr": float(sched.max_lrs[0]), "min_lr": float(sched.min_lrs[0]),
            "warmup_steps": int(sched.warmup_num_steps), "total_steps": int(sched.total_num_steps)}


def _is_warmup_decay(sched: Any) -> bool:
    return type(sched).__name__ == "WarmupDecayLR"


def decay_lr(schedule: dict, iteration: int) -> float:
    """WarmupDecayLR after warmup: ``min + (peak - min) * (total - iteration) / (total - warmup)``."""
    total, warmup, low = schedule["total_steps"], schedule["warmup_steps"], schedule["min_lr"]
    return low + (schedule["peak_lr"] - low) * max(0.0, (total - iteration) / max(1.0, total - warmup))


def continue_schedule(engine: Any, saved: dict, base_lr: float) -> Optional[str]:
    """After a resume whose ``train.max_steps`` differs from the checkpoint's (say 1000 -> 2000), keep the
    learning rate continuous: during warmup only the end point moves; after warmup the linear decay goes on
    from the rate the checkpoint was at and reaches its minimum at the new ``max_steps`` (the engine's
    WarmupDecayLR gets a rescaled peak). Without this the rate jumps back up towards the peak. A changed
    ``train.lr`` or ``train.warmup_steps`` is taken as given. Returns a line saying what changed, or None."""
    sched = getattr(engine, "lr_scheduler", None)
    if not saved or not _is_warmup_decay(sched):
        return None
    it = sched.last_batch_iteration
    same = (saved["warmup_steps"] == sched.warmup_num_steps and saved["base_lr"] == base_lr
            and saved["min_lr"] == sched.min_lrs[0])
    if not same or saved["total_steps"] == sched.total_num_steps or it < saved["warmup_steps"]:
        return None
    current = decay_lr(saved, it)
    low, total, warmup = saved["min_lr"], sched.total_num_steps, sched.warmup_num_steps
    peak = low + (current - low) * (total - warmup) / max(1, total - it)
    sched.max_lrs = [peak for _ in sched.max_lrs]
    sched.delta_lrs = [peak - m for m in sched.min_lrs]
    return (f"train.max_steps {saved['total_steps']} -> {total}: the learning rate decays on linearly from "
            f"{current:.3g} at step {it} to {low:.3g} at step {total}")
