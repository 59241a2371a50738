"""What a run builds from its config before the engine: the tokenizer, the tokenized splits, the collator and the
multi-task sampler (:func:`build_data`), the model (:func:`build_model`: a ``preset:`` backbone saved into the
run first, a few-shot transfer from an export, dropout and gradient checkpointing applied), and the micro-batches
of a step (:class:`MicroBatcher`)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..data.loading import columns_as_lists, load_multitask_splits, protocol_fingerprint
from ..data.sampler import MultiTaskSampler
from ..data.specs import TaskRegistry, registry_for_export, registry_from_config
from ..data.tokenization import Seq2SeqCollator, default_tokenizer, load_tokenizer, tokenize_splits
from ..errors import ConfigError
from ..modeling.compile import prepare_for_compile
from ..modeling.model import HyperscaleModel, load_backbone
from . import distributed as hdist
from .config import RunConfig
from .sharded import build_sharded_backbone
from .transfer import load_for_transfer, trainable_fp32, trained_parameters

COMPILE_BUCKET = 32  # train.compile without data.pad_to_multiple_of: lengths padded to multiples of this


@dataclass
class RunData:
    tokenizer: Any
    registry: TaskRegistry  # the built-in tasks plus the run's own (data.task_specs/files)
    data: dict  # task -> split -> tokenized dataset
    protocol: dict  # the split protocol's fingerprint (RUN/data_protocol.json)
    collate: Seq2SeqCollator
    train_columns: dict = field(default_factory=dict)  # task -> training columns as Python lists
    sampler: Optional[MultiTaskSampler] = None


def build_data(cfg: RunConfig, rank: int) -> RunData:
    d, tasks = cfg.data, list(cfg.data.tasks)
    tokenizer = default_tokenizer() if d.tokenizer == "default" else load_tokenizer(d.tokenizer)
    data_dir = None if d.data_dir == "sample" else d.data_dir
    registry = registry_from_config(d)
    if cfg.transfer.from_export:  # the export's own tasks keep their specs in this run's checkpoints and export
        registry = registry.merged(registry_for_export(cfg.transfer.from_export))
    splits = load_multitask_splits(d.tasks, data_dir, registry=registry,
                                   n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
                                   seed=d.split_seed, subset_seed=d.train_subset_seed, stsb_grid=d.stsb_grid,
                                   add_prefix=cfg.model.method == "finetune")
    cache_dir = Path(d.cache_dir) if d.cache_dir else None
    data: dict = {}
    if rank == 0:  # rank 0 fills the cache, the others read it
        data = tokenize_splits(splits, tokenizer, d.max_source_length, d.max_target_length, cache_dir)
    hdist.barrier()
    if rank != 0:
        data = tokenize_splits(splits, tokenizer, d.max_source_length, d.max_target_length, cache_dir)
    bucket = d.pad_to_multiple_of or (COMPILE_BUCKET if cfg.train.compile else 0)
    collate = Seq2SeqCollator(pad_token_id=tokenizer.pad_token_id, task_to_id={t: i for i, t in enumerate(tasks)},
                              pad_to_multiple_of=bucket or None)
    # the training columns as Python lists: row access through `datasets` costs ~100x more per example
    columns = {t: columns_as_lists(data[t]["train"], ["input_ids", "labels"]) for t in tasks}
    sizes = {t: len(columns[t]["input_ids"]) for t in tasks}
    lengths = {t: [len(x) for x in columns[t]["input_ids"]] for t in tasks} if cfg.sampler.group_by_length else None
    sampler = MultiTaskSampler(sizes, cfg.train.global_batch_size, seed=cfg.train.seed,
                               temperature=cfg.sampler.temperature, mode=cfg.sampler.mode,
                               group_by_length=cfg.sampler.group_by_length, lengths=lengths)
    hdist.log0(f"data: {', '.join(f'{t} {n}' for t, n in sizes.items())} training examples")
    return RunData(tokenizer, registry, data, protocol_fingerprint(splits), collate, columns, sampler)


def resolve_backbone(cfg: RunConfig, output_dir: Path, rank: int) -> str:
    """A ``preset:`` backbone is created once (seeded), saved into the run and loaded back from disk."""
    spec = cfg.model.backbone
    if not spec.startswith("preset:"):
        return spec
    target = output_dir / "backbone"
    error: Optional[ConfigError] = None
    if rank == 0 and not (target / "config.json").exists():
        torch.manual_seed(cfg.model.init_seed)
        model, _ = load_backbone(spec)
        need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (8 << 20)
        where = next(d for d in (output_dir, *output_dir.parents) if d.exists())
        free = shutil.disk_usage(where).free
        if free < need:  # before a half-written safetensors file, not after
            error = ConfigError(f"output_dir {output_dir} has {free / 2**20:.0f} MiB free; the {spec} backbone "
                                f"saved into it needs about {need / 2**20:.0f} MiB: free space or choose another "
                                "output_dir")
        else:
            model.save_pretrained(str(target))
        del model
        torch.manual_seed(cfg.train.seed + rank)
    if hdist.any_rank(error is not None):
        raise error or ConfigError(f"output_dir {output_dir} cannot hold the {spec} backbone (rank 0 says why)")
    return str(target)


def build_model(cfg: RunConfig, ds_config: dict, output_dir: Path,
                rank: int) -> tuple[HyperscaleModel, Optional[dict]]:
    """The run's model, and under few-shot transfer in bf16/fp16 the export's exact fp32 trainable weights (to put
    back after the engine casts them; else None)."""
    m, tasks = cfg.model, list(cfg.data.tasks)
    transfer_weights = None
    if cfg.transfer.from_export:  # few-shot transfer: the export's model, the new tasks added
        if cfg.deepspeed.build_sharded:
            raise ConfigError("transfer.from_export loads the export's model whole on each rank; set "
                              "deepspeed.build_sharded=false")
        model = load_for_transfer(cfg.transfer, m, tasks)
        if cfg.train.precision != "fp32":  # exact, before the engine casts them to bf16/fp16
            transfer_weights = trainable_fp32(model)
        backbone = model.config.backbone_id
    else:
        backbone = resolve_backbone(cfg, output_dir, rank)
        # transformers 5 loads a directory in the dtype it was saved in: a bf16-saved backbone in an fp32 run
        # would stay bf16 (ZeRO 1-3 then fail on mixed dtypes, ZeRO-0 trains a bf16 model silently). fp32
        # asks for fp32; bf16/fp16 keep the saved dtype (DeepSpeed casts, without an fp32 copy on the way)
        dtype = torch.float32 if cfg.train.precision == "fp32" else None
        # straight into ZeRO-3 partitions in the engine's dtype under build_sharded
        source = build_sharded_backbone(backbone, ds_config) if cfg.deepspeed.build_sharded else backbone
        # the model section is an ArchConfig (plus run-only fields): its architecture part is the model's
        model = HyperscaleModel.from_backbone(source, tasks, torch_dtype=dtype, **m.arch_dict())
    if m.dropout is not None:
        model.backbone.config.dropout_rate = m.dropout
        for mod in model.backbone.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = m.dropout
    if m.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.train.compile:  # what transformers adds for reentrant checkpointing breaks the graph
            prepare_for_compile(model)
    if cfg.train.precision == "fp16":
        hdist.log0("warning: fp16 with T5 overflows easily (inf activations); bf16 is the supported precision")
    hdist.log0(f"model: {m.method} on {backbone}: {parameter_summary(model, cfg)}")
    return model, transfer_weights


def parameter_summary(model: HyperscaleModel, cfg: RunConfig) -> str:
    """What trains, in the words ``hyperscale params`` and ``hyperscale adapt`` use: the share of the backbone
    per task only where the trained weights are per task (finetune trains one model for every task), and
    under few-shot transfer the parameters that learn beside those held fixed."""
    report = model.parameter_report()
    trainable, backbone = report["trainable"], report["backbone"]
    if not model.config.uses_adapters:
        return f"all {trainable:,} parameters of the backbone train, one model for {report['tasks']} task(s)"
    if cfg.transfer.from_export:
        learn = trained_parameters(model, cfg.transfer.train)
        n_learn = sum(p.numel() for p in model.parameters() if id(p) in learn)
        return (f"{n_learn:,} parameters learn (transfer.train={cfg.transfer.train}), the other "
                f"{trainable - n_learn:,} trainable ones are held fixed; backbone {backbone:,} frozen")
    return (f"{trainable:,} trainable parameters beside {backbone:,} frozen backbone ones "
            f"({report['percent_per_task']:.3f} % of the backbone per task)")


class MicroBatcher:
    """Micro-batches on the training device from the sampler's (task, index) pairs, with the model's task ids."""

    def __init__(self, collate: Seq2SeqCollator, train_columns: dict, model: HyperscaleModel, tasks: list[str],
                 device: torch.device, compiled: bool):
        self.collate, self.train_columns, self.device, self.compiled = collate, train_columns, device, compiled
        # the data's task index -> the model's (they differ when the model knows more tasks than the run trains)
        self.model_task_ids = torch.tensor([model.task_index(t) for t in tasks])
        self.model_task_ids_device = self.model_task_ids.to(device)

    def __call__(self, examples: list, counts: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """A micro-batch on the training device and the model's task ids for it; adds its examples and tokens per
        task to ``counts`` (host). The batch's ``task_index`` is the data's task index (on the device)."""
        feats = []
        for task, idx in examples:
            cols = self.train_columns[task]
            feats.append({"input_ids": cols["input_ids"][int(idx)], "labels": cols["labels"][int(idx)], "task": task})
        batch = self.collate(feats)
        task_ids = batch.pop("task_ids")
        counts[0].index_add_(0, task_ids, torch.ones(len(task_ids)))
        counts[1].index_add_(0, task_ids, (batch["attention_mask"].sum(1) + (batch["labels"] != -100).sum(1)).float())
        on_device = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        on_device["task_index"] = task_ids.to(self.device, non_blocking=True)
        return on_device, self._model_task_ids(task_ids, on_device)

    def _model_task_ids(self, task_ids: torch.Tensor, batch: dict) -> torch.Tensor:
        """The model's task ids for a micro-batch. Eager: a host tensor (the model reads it to generate weights
        for the batch's distinct tasks only). Compiled: a device tensor, never read on the host inside the graph
        (``HyperscaleModel._traced_context``): one 0-dim id for a single-task micro-batch (the single-task
        path), else one id per example (weights for every task, picked per example)."""
        ids = self.model_task_ids[task_ids]
        if not self.compiled:
            return ids
        on_device = self.model_task_ids_device[batch["task_index"]]
        return on_device[0] if bool((ids == ids[0]).all()) else on_device
