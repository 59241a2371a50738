"""``HyperscaleModel``: a frozen upstream T5 with adapters attached by forward hooks.

The model wraps, never forks, a ``transformers`` T5-family model. Per forward it (1) resolves the
task ids, (2) generates the adapter weights of every slot of both stacks in one batched call per
stack, for the distinct tasks of the batch only, (3) runs the unmodified backbone inside an
``adapter_context`` that the hooks read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .attach import STACKS, iter_slots, num_layers
from .adapter import apply_adapter
from .context import AdapterContext, active_context, adapter_context
from .hypernet import HyperNetBank
from .static import StaticAdapterBank

METHODS = ("hyperformer++", "hyperformer", "adapters", "adapters-shared-norm", "finetune")
CONFIG_NAME = "hyperscale_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

TaskIds = Union[None, str, int, torch.Tensor, Sequence[Union[str, int]]]


@dataclass
class HyperscaleConfig:
    """Everything needed to rebuild a model from its saved trainable weights."""

    method: str
    tasks: list[str]
    reduction_factor: int = 32
    task_embedding_dim: int = 64
    layer_embedding_dim: int = 64
    position_embedding_dim: int = 64
    projector_hidden_dim: int = 128
    conditioning_dim: int = 64
    adapter_ln_eps: float = 1e-5
    train_layer_norms: bool = True
    backbone_id: Optional[str] = None
    backbone_hash: Optional[str] = None
    backbone_config: dict = field(default_factory=dict)
    materialized_from: Optional[str] = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one task name")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task names must be unique, got {self.tasks}")
        if self.reduction_factor < 1:
            raise ValueError(f"reduction_factor must be >= 1, got {self.reduction_factor}")

    @property
    def uses_adapters(self) -> bool:
        return self.method != "finetune"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HyperscaleConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown keys in {CONFIG_NAME}: {sorted(unknown)} (written by a newer hyperscale?)")
        return cls(**d)


def load_backbone(backbone: Any, torch_dtype: Optional[torch.dtype] = None) -> tuple[nn.Module, str]:
    """Return (model, backbone_id) for a model instance, ``preset:NAME``, a local directory or a hub id."""
    from transformers import AutoModelForSeq2SeqLM, T5ForConditionalGeneration, MT5ForConditionalGeneration

    if isinstance(backbone, nn.Module):
        return backbone, str(getattr(backbone.config, "_name_or_path", "") or "<in-memory>")
    if not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(f"backbone must be a T5 model, a directory, a hub id or 'preset:NAME', got {type(backbone)}")
    spec = str(backbone)
    if spec.startswith("preset:"):
        from .presets import preset_config, preset_ties_head, untie_lm_head

        cfg = preset_config(spec)
        cls = MT5ForConditionalGeneration if cfg.model_type == "mt5" else T5ForConditionalGeneration
        model = cls(cfg)
        if not preset_ties_head(spec):
            untie_lm_head(model)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model, spec
    if os.path.isdir(spec):
        return AutoModelForSeq2SeqLM.from_pretrained(spec, dtype=torch_dtype), str(Path(spec).resolve())
    if os.path.exists(spec):
        raise ValueError(f"backbone {spec!r} is a file; give the directory written by save_pretrained")
    # a hub id: needs network access (or a populated Hugging Face cache)
    return AutoModelForSeq2SeqLM.from_pretrained(spec, dtype=torch_dtype), spec


def _numel(p: torch.Tensor) -> int:
    """Element count, also for ZeRO-3-partitioned parameters (whose local ``numel()`` is a shard)."""
    return int(getattr(p, "ds_numel", p.numel()))


def _is_layer_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("LayerNorm")


def backbone_hash(params: Iterable[tuple[str, torch.Tensor]], max_elems: int = 1 << 20) -> Optional[str]:
    """A fingerprint of (frozen) backbone weights, stable across fp32/bf16 loading.

    Values are rounded to bf16 before hashing. Tensors above ``max_elems`` elements are hashed on a
    deterministic strided sample plus their fp64 sum (a full pass would take minutes for 11B).
    Returns None for meta or ZeRO-3-partitioned tensors, which hold no values here.
    """
    h = hashlib.sha256()
    for name, p in sorted(params, key=lambda kv: kv[0]):
        if p.is_meta or (hasattr(p, "ds_numel") and p.numel() != getattr(p, "ds_numel")):
            return None
        t = p.detach().reshape(-1)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        if t.numel() > max_elems:
            step = t.numel() // max_elems
            h.update(repr(round(t.double().sum().item(), 2)).encode())
            t = t[::step]
        h.update(t.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return h.hexdigest()


class HyperscaleModel(nn.Module):
    def __init__(self, backbone: nn.Module, config: HyperscaleConfig, compute_hash: bool = True):
        super().__init__()
        self.config = config
        self.backbone = backbone
        bcfg = backbone.config
        self.d_model = bcfg.d_model
        self.layers = {stack: num_layers(backbone, stack) for stack in STACKS}
        self.bottleneck = max(1, self.d_model // config.reduction_factor)
        self.bank: Optional[nn.Module] = self._build_bank()
        if not config.backbone_config:
            config.backbone_config = bcfg.to_dict()
        self._hooks: list = []
        self._ctx_holder: dict[str, Optional[AdapterContext]] = {"last": None}
        if self.bank is not None:
            self._attach()
        self._set_trainable()
        if compute_hash and config.backbone_hash is None and config.uses_adapters:
            config.backbone_hash = backbone_hash(self._frozen_backbone_params())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: Any,
        tasks: Sequence[str],
        method: str = "hyperformer++",
        reduction_factor: int = 32,
        torch_dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> "HyperscaleModel":
        """Wrap ``backbone`` (a T5 model, a local directory, a hub id or ``preset:NAME``)."""
        config = HyperscaleConfig(method=method, tasks=list(tasks), reduction_factor=reduction_factor, **kwargs)
        model, backbone_id = load_backbone(backbone, torch_dtype)
        config.backbone_id = backbone_id
        return cls(model, config)

    def _build_bank(self) -> Optional[nn.Module]:
        c = self.config
        n = len(c.tasks)
        if c.method in ("hyperformer++", "hyperformer"):
            return HyperNetBank(
                n, self.layers, self.d_model, self.bottleneck, c.task_embedding_dim, c.layer_embedding_dim,
                c.position_embedding_dim, c.projector_hidden_dim, c.conditioning_dim,
                per_slot=c.method == "hyperformer",
            )
        if c.method in ("adapters", "adapters-shared-norm"):
            return StaticAdapterBank(n, self.layers, self.d_model, self.bottleneck,
                                     shared_norm=c.method == "adapters-shared-norm")
        return None

    def _attach(self) -> None:
        eps = self.config.adapter_ln_eps
        holder = self._ctx_holder

        def make_hook(stack: str, slot: int):
            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                ctx = active_context()
                if ctx is None and torch._C._current_graph_task_id() != -1:
                    ctx = holder["last"]  # activation checkpointing: recomputation inside backward
                if ctx is None:
                    raise RuntimeError(
                        "hyperscale adapter hook ran outside an adapter context: call the HyperscaleModel "
                        "(model(..., task_ids=...) / model.generate(..., task_ids=...)), not its backbone"
                    )
                y = output[0] if isinstance(output, tuple) else output
                out = apply_adapter(y, *ctx.slots[stack][slot], ctx.example_index, eps)
                return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

            return hook

        if getattr(self.backbone, "_hyperscale_attached", False):
            raise ValueError("this backbone already carries hyperscale adapters (another HyperscaleModel wraps it); "
                             "give each HyperscaleModel its own backbone (e.g. copy.deepcopy(backbone))")
        for slot, module in iter_slots(self.backbone):
            self._hooks.append(module.register_forward_hook(make_hook(slot.stack, slot.index)))
        self.backbone._hyperscale_attached = True

    def _set_trainable(self) -> None:
        if not self.config.uses_adapters:
            for p in self.parameters():
                p.requires_grad_(True)
            return
        self.backbone.requires_grad_(False)
        if self.config.train_layer_norms:
            for mod in self.backbone.modules():
                if _is_layer_norm(mod):
                    mod.requires_grad_(True)
        if self.bank is not None:
            self.bank.requires_grad_(True)

    def _frozen_backbone_params(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, p) for n, p in self.backbone.named_parameters() if not p.requires_grad]

    # ------------------------------------------------------------------ tasks
    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def _task_error(self, bad: Any) -> ValueError:
        return ValueError(f"unknown task id {bad!r}; known tasks: {', '.join(self.config.tasks)} "
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
            raise ValueError(f"task_ids is missing: pass task_ids (one per example or one for the batch); "
                             f"known tasks: {', '.join(self.config.tasks)}")
        if isinstance(task_ids, torch.Tensor):
            task_ids = task_ids.tolist()  # one host sync; collators produce CPU tensors
        if isinstance(task_ids, (str, int)):
            return [self.task_index(task_ids)], None
        ids = [self.task_index(t) for t in task_ids]
        if len(ids) != batch_size:
            raise ValueError(f"got {len(ids)} task ids for a batch of {batch_size} examples")
        distinct = sorted(set(ids))
        if len(distinct) == 1:
            return distinct, None
        pos = {t: i for i, t in enumerate(distinct)}
        return distinct, [pos[t] for t in ids]

    def _param_device(self) -> torch.device:
        return next(self.bank.parameters()).device if self.bank is not None else next(self.parameters()).device

    def build_context(self, task_ids: TaskIds, batch_size: int) -> AdapterContext:
        distinct, example = self.resolve_task_ids(task_ids, batch_size)
        device = self._param_device()
        weights = self.bank(torch.tensor(distinct, dtype=torch.long, device=device))
        ex = None if example is None else torch.tensor(example, dtype=torch.long, device=device)
        ctx = AdapterContext(weights=weights, example_index=ex)
        # activation checkpointing recomputes the forward during backward, outside the `with` scope
        self._ctx_holder["last"] = ctx if self._checkpointing() else None
        return ctx

    def _checkpointing(self) -> bool:
        bb = self.backbone
        return bool(getattr(bb, "is_activation_checkpointing", None) or
                    any(getattr(m, "gradient_checkpointing", False) for m in (bb.encoder, bb.decoder)))

    def add_task(self, name: str, init: Union[str, int] = "mean") -> None:
        """Add a task: its embedding (or static adapters) start from the mean, random, or a task's copy."""
        if name in self.config.tasks:
            raise ValueError(f"task {name!r} already exists; tasks: {', '.join(self.config.tasks)}")
        if self.bank is None:
            self.config.tasks.append(name)
            return
        if init not in ("mean", "random"):
            init = self.task_index(init)
        self.bank.add_task(init)
        self.bank.requires_grad_(True)
        self.config.tasks.append(name)

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
        raise ValueError("cannot infer the batch size: pass input_ids")

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, task_ids: TaskIds = None, **kwargs: Any) -> Any:
        if self.bank is None:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if labels is not None:
            kwargs["labels"] = labels
        ctx = self.build_context(task_ids, self._batch_size(input_ids, kwargs))
        with adapter_context(ctx):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 task_ids: TaskIds = None, **kwargs: Any) -> torch.Tensor:
        """``backbone.generate`` with adapter weights generated once for the whole call."""
        if self.bank is None:
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

        Refuses to overwrite an earlier save unless ``overwrite=True``.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        existing = [out / CONFIG_NAME, out / WEIGHTS_NAME]
        if not overwrite and any(p.exists() for p in existing):
            raise FileExistsError(f"{out} already holds a saved model; choose another directory or pass overwrite=True")
        out.mkdir(parents=True, exist_ok=True)
        sd = state_dict if state_dict is not None else self.trainable_state_dict()
        sd = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
              for k, v in sd.items()}
        tmp = out / (WEIGHTS_NAME + ".tmp")
        save_file(sd, str(tmp), metadata={"format": "pt", "hyperscale_format": str(FORMAT_VERSION)})
        os.replace(tmp, out / WEIGHTS_NAME)
        (out / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], backbone: Any = None,
                        torch_dtype: Optional[torch.dtype] = None, check_hash: bool = True) -> "HyperscaleModel":
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{d} has no {CONFIG_NAME}: give a directory written by "
                                    "HyperscaleModel.save_pretrained or `hyperscale export`")
        config = HyperscaleConfig.from_dict(json.loads((d / CONFIG_NAME).read_text()))
        saved_hash = config.backbone_hash
        if backbone is None:
            if config.backbone_id is None or config.backbone_id.startswith(("preset:", "<")):
                raise ValueError(f"{d} was trained on backbone {config.backbone_id!r}, which cannot be reloaded "
                                 "by name; pass backbone=<the T5 model or its directory>")
            backbone = config.backbone_id
        model_bb, backbone_id = load_backbone(backbone, torch_dtype)
        config.backbone_hash = None
        model = cls(model_bb, config, compute_hash=check_hash)
        if check_hash and config.uses_adapters and saved_hash is not None and config.backbone_hash != saved_hash:
            raise ValueError(
                f"backbone {backbone_id!r} does not match the one {d} was trained on: weight hash "
                f"{config.backbone_hash[:12] if config.backbone_hash else None} != saved {saved_hash[:12]}; "
                "load the original backbone (or pass check_hash=False at your own risk)"
            )
        config.backbone_hash = saved_hash
        sd = load_file(str(d / WEIGHTS_NAME))
        model.load_trainable_state_dict(sd, source=str(d))
        return model

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load trainable weights; a tied weight may come under any of its names (DeepSpeed's
        consolidation writes T5's ``shared`` / ``embed_tokens`` / ``lm_head`` aliases separately)."""
        own = dict(self.named_parameters(remove_duplicate=False))
        trainable = {id(p): n for n, p in self.named_parameters() if p.requires_grad}
        unknown = [k for k in sd if k not in own]
        covered = {id(own[k]) for k in sd if k in own}
        missing = sorted(n for i, n in trainable.items() if i not in covered)
        frozen = [k for k in sd if k in own and id(own[k]) not in trainable]
        if unknown or missing or frozen:
            raise ValueError(f"{source} does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                             f", unexpected {unknown[:5]}{'...' if len(unknown) > 5 else ''}"
                             + (f", frozen in this model {frozen[:5]}" if frozen else ""))
        with torch.no_grad():
            for k, v in sd.items():
                if own[k].shape != v.shape:
                    raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
                own[k].copy_(v.to(own[k].dtype))

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def materialize(self) -> "HyperscaleModel":
        """A copy with every task's generated adapters as static weights (no hypernetwork needed)."""
        import copy

        if self.config.method not in ("hyperformer++", "hyperformer"):
            raise ValueError(f"materialize applies to hypernetwork methods, not {self.config.method!r}")
        cfg = dataclasses.replace(self.config, method="adapters", materialized_from=self.config.method,
                                  tasks=list(self.config.tasks))
        backbone = copy.deepcopy(self.backbone)
        # deepcopy copied the hooks of self: drop them so the copy's own hooks attach to `out`
        for mod in backbone.modules():
            mod._forward_hooks.clear()
        backbone._hyperscale_attached = False
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
