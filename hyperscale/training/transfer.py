"""Few-shot transfer: a run that starts from a trained multi-task model (``transfer.from_export``).

The export's model is loaded as it was saved (method, architecture, backbone, every task), the run's tasks it
does not know are added (``HyperscaleModel.add_task``: an embedding from the mean of the trained ones, random,
or a copy of a named task's), and ``transfer.train`` says what learns:

- ``embedding``: the task embeddings only (in practice the new ones: the old tasks get no examples);
- ``embedding+hypernet``: plus the hypernetwork (for static adapters: the adapters);
- ``embedding+hypernet+norms``: plus T5's layer norms: everything HyperFormer++ trains in multi-task training;
- ``all``: every weight; the baseline, for a ``finetune`` export (multi-task fine-tuning, then the k examples).

Under bf16 the optimizer's fp32 master weights are set from the export's exact values
(:func:`restore_fp32_masters`), not from the module's bf16 copy, so nothing is rounded on the way in.

The weights that are held fixed keep ``requires_grad`` (they are part of the saved model, and the backbone's
hash covers exactly the frozen backbone weights), and a gradient hook makes their gradient zero. With AdamW and
no weight decay (the config refuses weight decay here) a zero gradient leaves a weight and its moments exactly
as they were, under every ZeRO stage: the tests check that they come out bit-identical.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..modeling.config import CONFIG_NAME
from ..modeling.model import HyperscaleModel
from . import distributed as hdist
from .config import ModelConfig, TransferConfig

HYPERNET_METHODS = ("hyperformer++", "hyperformer")
STATIC_METHODS = ("adapters", "adapters-shared-norm")


def check_transfer(transfer: TransferConfig, model_cfg: ModelConfig, saved_method: str, saved_tasks: list[str],
                   saved_arch: dict) -> None:
    """The run's ``model:`` section must describe the export's model, and ``transfer.train`` must suit its method."""
    diffs = [f"model.{k}={v!r} (the export: {saved_arch[k]!r})" for k, v in model_cfg.arch_dict().items()
             if k in saved_arch and saved_arch[k] != v]
    if diffs:
        raise ConfigError(f"transfer.from_export={transfer.from_export}: the run's model section differs from the "
                          f"export's: {', '.join(diffs)}; set them as the export has them (hyperscale adapt does)")
    mode = transfer.train
    if saved_method == "finetune" and mode != "all":
        raise ConfigError(f"transfer.train={mode}: a finetune export has no task embeddings or adapters; "
                          "use transfer.train=all")
    if saved_method != "finetune" and mode == "all":
        raise ConfigError(f"transfer.train=all trains every backbone weight, which a {saved_method} export keeps "
                          "frozen; use embedding, embedding+hypernet or embedding+hypernet+norms")
    if saved_method in STATIC_METHODS and mode == "embedding":
        raise ConfigError(f"transfer.train=embedding: method {saved_method} has no task embeddings; use "
                          "embedding+hypernet (trains the new task's adapters)")
    init = transfer.new_task_init
    if init not in ("mean", "random") and init not in saved_tasks:
        raise ConfigError(f"transfer.new_task_init={init!r} is not mean, random or a task of the export "
                          f"({', '.join(saved_tasks)})")


def check_export_dir(transfer: TransferConfig) -> Path:
    path = Path(transfer.from_export)
    if not (path / CONFIG_NAME).is_file():
        raise ConfigError(f"transfer.from_export={path}: no {CONFIG_NAME} there; give an export (a run's export/ "
                          "or the output of hyperscale export)")
    return path


def load_for_transfer(transfer: TransferConfig, model_cfg: ModelConfig, tasks: list[str]) -> HyperscaleModel:
    """The export's model with ``tasks`` it lacks added, and the weights ``transfer.train`` holds fixed hooked."""
    model = HyperscaleModel.from_pretrained(check_export_dir(transfer))
    saved = model.config
    check_transfer(transfer, model_cfg, saved.method, list(saved.tasks), saved.arch_dict())
    new = [t for t in tasks if t not in saved.tasks]
    for task in new:
        model.add_task(task, transfer.new_task_init)
    hold_fixed(model, transfer.train)
    # what learns and what is held fixed: the run's "model:" line (build.parameter_summary)
    hdist.log0(f"transfer from {transfer.from_export}: new tasks {', '.join(new) or 'none'} "
               f"(init: {transfer.new_task_init})")
    return model


def trained_parameters(model: HyperscaleModel, mode: str) -> set[int]:
    """``id``\\ s of the parameters that learn under ``transfer.train=mode``."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if mode in ("all", "embedding+hypernet+norms"):
        return {id(p) for p in trainable}
    bank = model.bank
    if mode == "embedding+hypernet":
        return {id(p) for p in bank.parameters()}
    return {id(bank.task_embeddings)}


def hold_fixed(model: HyperscaleModel, mode: str) -> list[str]:
    """Zero the gradient of every trainable weight outside ``mode``'s set; returns their names."""
    keep = trained_parameters(model, mode)
    fixed = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in keep:
            p.register_hook(torch.zeros_like)
            fixed.append(name)
    return fixed


def trainable_fp32(model: HyperscaleModel) -> dict[str, torch.Tensor]:
    """The trainable weights in fp32, taken before DeepSpeed casts the module to bf16/fp16."""
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_fp32_masters(engine: Any, weights: dict[str, torch.Tensor]) -> int:
    """Under bf16/fp16 DeepSpeed takes its fp32 master weights from the module's low-precision copy, which
    would round the export's trained weights (and change those ``transfer.train`` holds fixed); put the exact
    fp32 values into the masters instead (DeepSpeed's ``safe_set_full_fp32_param``, ZeRO 0-3). Returns how
    many parameters were set (0 in fp32, where the module's weights are the masters)."""
    from deepspeed.utils import safe_set_full_fp32_param  # heavy: only when an engine exists

    n = 0
    for name, p in engine.module.named_parameters():
        if name in weights and (hasattr(p, "_hp_mapping") or hasattr(p, "ds_id")):
            safe_set_full_fp32_param(p, weights[name].to(p.device))
            n += 1
    return n