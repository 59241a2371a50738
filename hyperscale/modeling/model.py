"""``HyperscaleModel``: a frozen upstream T5 with adapters attached by forward hooks.

The model wraps, never forks, a ``transformers`` T5-family model. Per forward it (1) resolves the
task ids, (2) generates the adapter weights of every slot of both stacks in one batched call per
stack, for the distinct tasks of the batch only, (3) runs the unmodified backbone inside an
``adapter_context`` that the hooks read.

This module is the wrapper only; the pieces live next to it (and are re-exported here):
``config.py`` (``HyperscaleConfig``), ``inject.py`` (hooks in and out, trainable marking) and
``io.py`` (backbone loading and hashing, the saved-model format).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError
from .attach import STACKS, num_layers
from .config import CONFIG_NAME, FORMAT_VERSION, METHODS, HyperscaleConfig
from .context import AdapterContext, adapter_context
from .hypernet import HyperNetBank
from .inject import AdapterHooks, attach_adapters, set_trainable
from .io import (
    WEIGHTS_NAME,
    backbone_file_hash,
    backbone_hash,
    frozen_params,
    hash_names,
    is_relative_backbone,
    load_backbone,
    load_trainable_state_dict,
    read_config,
    read_weights,
    relative_backbone_id,
    save_pretrained,
    saved_backbone,
    verify_backbone,
)
from .static import StaticAdapterBank

TaskIds = Union[None, str, int, torch.Tensor, Sequence[Union[str, int]]]


def _numel(p: torch.Tensor) -> int:
    """Element count, also for ZeRO-3-partitioned parameters (whose local ``numel()`` is a shard)."""
    return int(getattr(p, "ds_numel", p.numel()))


def _build_bank(config: HyperscaleConfig, layers: dict[str, int], d_model: int, bottleneck: int) -> Optional[nn.Module]:
    c, n = config, len(config.tasks)
    if c.method in ("hyperformer++", "hyperformer"):
        return HyperNetBank(
            n, layers, d_model, bottleneck, c.task_embedding_dim, c.layer_embedding_dim,
            c.position_embedding_dim, c.projector_hidden_dim, c.conditioning_dim,
            per_slot=c.method == "hyperformer",
        )
    if c.method in ("adapters", "adapters-shared-norm"):
        return StaticAdapterBank(n, layers, d_model, bottleneck, shared_norm=c.method == "adapters-shared-norm")
    return None


class HyperscaleModel(nn.Module):
    """Wraps ``backbone`` per ``config``; the caller's ``config`` is never modified.

    ``self.config`` is a config of its own: the given one, completed with ``backbone_config`` (when
    empty) and, with ``compute_hash`` and an adapter method, the hash of the frozen backbone weights
    (when ``backbone_hash`` is None).
    """

    def __init__(self, backbone: nn.Module, config: HyperscaleConfig, compute_hash: bool = True):
        super().__init__()
        self.backbone = backbone
        bcfg = backbone.config
        self.d_model = bcfg.d_model
        self.layers = {stack: num_layers(backbone, stack) for stack in STACKS}
        self.bottleneck = max(1, self.d_model // config.reduction_factor)
        if not config.backbone_config:
            config = dataclasses.replace(config, backbone_config=bcfg.to_dict())
        self.config = config
        self.bank: Optional[nn.Module] = _build_bank(config, self.layers, self.d_model, self.bottleneck)
        # the context of the last forward, for activation checkpointing's recomputation inside backward
        self._ctx_holder: dict[str, Optional[AdapterContext]] = {"last": None}
        holder = self._ctx_holder
        self._adapter_hooks = (attach_adapters(backbone, config.adapter_ln_eps, lambda: holder["last"])
                               if self.bank is not None else AdapterHooks(backbone))
        set_trainable(backbone, self.bank, config.uses_adapters, config.train_layer_norms)
        if compute_hash and config.backbone_hash is None and config.uses_adapters:
            self.update_backbone_hash()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: Any,
        tasks: Sequence[str],
        torch_dtype: Optional[torch.dtype] = None,
        **arch: Any,
    ) -> "HyperscaleModel":
        """Wrap ``backbone`` (a T5 model, a local directory, a hub id or ``preset:NAME``); ``arch``: fields of
        :class:`~hyperscale.modeling.config.ArchConfig` (``method``, ``reduction_factor``, ...), each left out
        taking its default there."""
        tasks = tasks if isinstance(tasks, str) else list(tasks)  # a bare string is refused by the config
        config = HyperscaleConfig(tasks=tasks, **arch)
        model, backbone_id = load_backbone(backbone, torch_dtype)
        return cls(model, dataclasses.replace(config, backbone_id=backbone_id))

    def _frozen_backbone_params(self) -> list[tuple[str, torch.Tensor]]:
        return frozen_params(self.backbone)

    def update_backbone_hash(self) -> Optional[str]:
        """Record the hash of the current frozen backbone weights in a new ``self.config`` (e.g. after
        they were replaced in place); returns it. No-op (None) for ``finetune``, whose backbone trains."""
        if not self.config.uses_adapters:
            return None
        h = backbone_hash(self._frozen_backbone_params())
        bid = self.config.backbone_id
        if h is None and bid and os.path.isdir(bid):  # ZeRO-3 shards or meta tensors: hash the files instead
            h = backbone_file_hash(bid, hash_names(self.backbone))
        self.config = dataclasses.replace(self.config, backbone_hash=h)
        return h

    # ------------------------------------------------------------------ hooks
    @property
    def adapter_hooks(self) -> AdapterHooks:
        """The hooks this model put on its backbone (empty for ``finetune`` and after ``detach()``)."""
        return self._adapter_hooks

    def detach(self) -> None:
        """Remove this model's adapter hooks from the backbone, leaving every other hook in place.

        Afterwards ``forward``/``generate`` run the bare backbone (task ids are not needed) and the
        backbone can be wrapped again. The bank and the trainable flags stay as they are.
        """
        self._adapter_hooks.remove()
        self._ctx_holder["last"] = None

    # ------------------------------------------------------------------ tasks
    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def _task_error(self, bad: Any) -> ValueError:
        return ConfigError(f"unknown task id {bad!r}; known tasks: {', '.join(self.config.tasks)} "
                          f"(names, or ints 0..{len(self.config.tasks) - 1})")

    def task_index(self, task: Union[str, int]) -> int:
        if isinstance(task, str):
            if task not in self.config.tasks:
                raise self._task_error(task)
            return self.config.tasks.index(task)
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < len(self.config.tasks):
            raise self._task_error(task)
        return task

    def resolve_task_ids(self, task_ids: TaskIds, batch_size: int) -> tuple[list[int], Optional[list[int]]]:
        """-> (distinct task indices, per-example index into them or None when one task)."""
        if task_ids is None:
            raise ConfigError(f"task_ids is missing: pass task_ids (one per example or one for the batch); "
                             f"known tasks: {', '.join(self.config.tasks)}")
        if isinstance(task_ids, torch.Tensor):
            task_ids = task_ids.tolist()  # one host sync; collators produce CPU tensors
        if isinstance(task_ids, (str, int)):
            return [self.task_index(task_ids)], None
        if not isinstance(task_ids, (list, tuple)):
            raise self._task_error(task_ids)
        ids = [self.task_index(t) for t in task_ids]
        if len(ids) != batch_size:
            raise ConfigError(f"got {len(ids)} task ids for a batch of {batch_size} examples")
        distinct = sorted(set(ids))
        if len(distinct) == 1:
            return distinct, None
        pos = {t: i for i, t in enumerate(distinct)}
        return distinct, [pos[t] for t in ids]

    def _param_device(self) -> torch.device:
        return next(self.bank.parameters()).device if self.bank is not None else next(self.parameters()).device

    def build_context(self, task_ids: TaskIds, batch_size: int) -> AdapterContext:
        if isinstance(task_ids, torch.Tensor) and torch.compiler.is_compiling():
            return self._traced_context(task_ids, batch_size)
        distinct, example = self.resolve_task_ids(task_ids, batch_size)
        device = self._param_device()
        weights = self.bank(torch.tensor(distinct, dtype=torch.long, device=device))
        ex = None if example is None else torch.tensor(example, dtype=torch.long, device=device)
        ctx = AdapterContext(weights=weights, example_index=ex)
        # activation checkpointing recomputes the forward during backward, outside the `with` scope
        self._ctx_holder["last"] = ctx if self._checkpointing() else None
        return ctx

    def _traced_context(self, task_ids: torch.Tensor, batch_size: int) -> AdapterContext:
        """The context under ``torch.compile`` for task ids given as a tensor: no host read of their values.

        Eager code reads the ids (``tolist``) to generate weights for the distinct tasks only, which Dynamo
        can trace only by breaking the graph and specialising on the values (a recompile per batch
        composition). Here the decision rests on the shape alone, as eager accepts shapes: one id for the
        batch (a 0-dim tensor, or one id for a batch of one) -> the ``T == 1`` fast path; one id per example
        -> weights for every task (T = the number of tasks, a constant) and each example picks its own.
        Same values as eager (up to rounding); ids are not validated on the host: an out-of-range id fails
        in ``index_select``. Pass a 0-dim id when the whole batch is one task, to keep the fast path.
        """
        device = self._param_device()
        idx = task_ids.to(device=device, dtype=torch.long)
        if idx.dim() == 0 or (idx.dim() == 1 and idx.shape[0] == 1 == batch_size):
            return AdapterContext(weights=self.bank(idx.reshape(1)), example_index=None)
        if idx.dim() != 1 or idx.shape[0] != batch_size:
            raise ConfigError(f"got task ids of shape {tuple(idx.shape)} for a batch of {batch_size} examples")
        every = torch.arange(len(self.config.tasks), dtype=torch.long, device=device)
        # the compiler traces activation checkpointing's recomputation itself: no context to keep
        return AdapterContext(weights=self.bank(every), example_index=idx)

    def _checkpointing(self) -> bool:
        bb = self.backbone
        return bool(getattr(bb, "is_activation_checkpointing", None) or
                    any(getattr(m, "gradient_checkpointing", False) for m in (bb.encoder, bb.decoder)))

    def add_task(self, name: str, init: Union[str, int] = "mean") -> None:
        """Add a task: its embedding (or static adapters) start from the mean, random, or a task's copy."""
        if name in self.config.tasks:
            raise ConfigError(f"task {name!r} already exists; tasks: {', '.join(self.config.tasks)}")
        config = dataclasses.replace(self.config, tasks=[*self.config.tasks, name])
        if self.bank is not None:
            if init not in ("mean", "random"):
                init = self.task_index(init)
            self.bank.add_task(init)
            self.bank.requires_grad_(True)
        self.config = config

    # ------------------------------------------------------------------ forward / generate
    @staticmethod
    def _batch_size(input_ids: Optional[torch.Tensor], kwargs: dict) -> int:
        if input_ids is not None:
            return input_ids.shape[0]
        enc = kwargs.get("encoder_outputs")
        if enc is not None:
            return (enc.last_hidden_state if hasattr(enc, "last_hidden_state") else enc[0]).shape[0]
        for key in ("inputs_embeds", "decoder_input_ids", "labels"):
            if kwargs.get(key) is not None:
                return kwargs[key].shape[0]
        raise ConfigError("cannot infer the batch size: pass input_ids")

    def _adapters_active(self) -> bool:
        return self.bank is not None and self._adapter_hooks.attached

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, task_ids: TaskIds = None, **kwargs: Any) -> Any:
        if not self._adapters_active():
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if labels is not None:
            kwargs["labels"] = labels
        stacks = (self.backbone.encoder, self.backbone.decoder)
        if ("use_cache" not in kwargs and torch.compiler.is_compiling() and self.training and torch.is_grad_enabled()
                and any(getattr(m, "gradient_checkpointing", False) for m in stacks)):
            # what transformers does itself when its stacks checkpoint while training, minus the
            # logger.warning_once that goes with it, which breaks the graph
            kwargs["use_cache"] = False
        ctx = self.build_context(task_ids, self._batch_size(input_ids, kwargs))
        with adapter_context(ctx):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 task_ids: TaskIds = None, **kwargs: Any) -> torch.Tensor:
        """``backbone.generate`` with adapter weights generated once for the whole call."""
        if not self._adapters_active():
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        ctx = self.build_context(task_ids, self._batch_size(input_ids, kwargs))
        with adapter_context(ctx):
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------------ weights
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def save_pretrained(self, directory: Union[str, os.PathLike], overwrite: bool = False,
                        state_dict: Optional[dict[str, torch.Tensor]] = None) -> Path:
        """Write the trainable weights (safetensors) and ``hyperscale_config.json``.

        A backbone directory inside ``directory`` (an export's own copy, ``directory/backbone``) is recorded
        relative to it (``./backbone``), so that the saved model can be moved with it; any other backbone is
        recorded as ``self.config`` names it. Refuses to overwrite an earlier save unless ``overwrite=True``.
        """
        sd = state_dict if state_dict is not None else self.trainable_state_dict()
        config, bid = self.config, self.config.backbone_id
        if bid and os.path.isabs(bid) and os.path.isdir(bid):
            inner, outer = Path(bid).resolve(), Path(directory).resolve()
            if inner != outer and outer in inner.parents:
                config = dataclasses.replace(config, backbone_id=relative_backbone_id(inner, outer))
        return save_pretrained(directory, config, sd, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], backbone: Any = None,
                        torch_dtype: Optional[torch.dtype] = None, check_hash: bool = True) -> "HyperscaleModel":
        """Rebuild a saved model on ``backbone`` (default: the recorded one; a relative one, an export's own
        copy such as ``./backbone``, is found next to the saved model wherever it was moved), refusing a
        backbone whose frozen weights hash differently from the saved hash unless ``check_hash=False``.

        The model's config names a relative backbone by its absolute path (what it was loaded from), so that
        saving the model elsewhere still finds it."""
        d = Path(directory)
        config = read_config(d)
        model_bb, backbone_id = load_backbone(saved_backbone(config, backbone, d), torch_dtype)
        if backbone is None and is_relative_backbone(config.backbone_id):
            config = dataclasses.replace(config, backbone_id=backbone_id)
        # the model keeps the saved hash; the loaded backbone's own hash is only compared with it
        model = cls(model_bb, config, compute_hash=False)
        if check_hash and config.uses_adapters and config.backbone_hash is not None:
            verify_backbone(model.backbone, config.backbone_hash, backbone_id, d)
        model.load_trainable_state_dict(read_weights(d, config), source=str(d))
        return model

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load trainable weights; a tied weight may come under any of its names (DeepSpeed's
        consolidation writes T5's ``shared`` / ``embed_tokens`` / ``lm_head`` aliases separately)."""
        load_trainable_state_dict(self, sd, source)

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def materialize(self) -> "HyperscaleModel":
        """A copy with every task's generated adapters as static weights (no hypernetwork needed)."""
        if self.config.method not in ("hyperformer++", "hyperformer"):
            raise ConfigError(f"materialize applies to hypernetwork methods, not {self.config.method!r}")
        cfg = dataclasses.replace(self.config, method="adapters", materialized_from=self.config.method)
        # copied together, the hooks' handles point into the copy: removing them there drops exactly the
        # copied hyperscale hooks (hooks other code registered are copied and kept), so the copy's own
        # hooks attach to `out`; self is not touched
        backbone, copied_hooks = copy.deepcopy((self.backbone, self._adapter_hooks))
        copied_hooks.remove()
        device = self._param_device()
        out = HyperscaleModel(backbone, cfg, compute_hash=False).to(device)
        for t in range(len(cfg.tasks)):
            w = self.bank(torch.tensor([t], device=device))
            out.bank.load_task_weights(t, w)
        return out

    # ------------------------------------------------------------------ reporting
    def parameter_report(self) -> dict[str, Any]:
        groups: dict[str, int] = {}
        if self.bank is not None:
            named = dict(self.bank.named_parameters())
            for group, prefixes in self.bank.param_groups().items():
                groups[group] = sum(_numel(p) for n, p in named.items() if any(n.startswith(x) for x in prefixes))
        backbone_total = sum(_numel(p) for p in self.backbone.parameters())
        if self.config.uses_adapters:
            ln = sum(_numel(p) for n, p in self.backbone.named_parameters() if p.requires_grad)
            groups["T5 layer norms"] = ln
        else:
            groups["T5 (all weights)"] = backbone_total
        trainable = sum(_numel(p) for p in self.parameters() if p.requires_grad)
        n_tasks = len(self.config.tasks)
        return {
            "method": self.config.method,
            "tasks": n_tasks,
            "reduction_factor": self.config.reduction_factor,
            "bottleneck": self.bottleneck,
            "groups": groups,
            "trainable": trainable,
            "backbone": backbone_total,
            "total": backbone_total + sum(_numel(p) for p in self.bank.parameters()) if self.bank is not None else backbone_total,
            "percent_per_task": 100.0 * trainable / n_tasks / backbone_total,
        }


__all__ = ["METHODS", "CONFIG_NAME", "WEIGHTS_NAME", "FORMAT_VERSION", "TaskIds", "HyperscaleConfig", "HyperscaleModel",
           "AdapterHooks", "load_backbone", "backbone_hash"]
