"""A backbone built straight into ZeRO-3 shards (``deepspeed.build_sharded``): never whole on any rank.

Hugging Face's own ZeRO-3 loading (``from_pretrained`` under ``HfDeepSpeedConfig``) reads every checkpoint file
whole on rank 0 and scatters each weight from there: for a T5 v1.1 XL stored in fp32 that is 11.4 GB resident
on rank 0 before the first step. Here instead:

1. the model is constructed under ``deepspeed.zero.Init`` in the engine's dtype, without weight initialisation
   (``transformers.initialization.no_init_weights``): each module's weights exist whole only inside that
   module's constructor, and are partitioned when it returns;
2. every rank reads from the checkpoint files (safetensors, sharded or not; or ``pytorch_model*.bin``,
   memory-mapped) exactly the slice of each weight that its own partition holds, and copies it in: no gather,
   no broadcast, and at most one partition plus a row of any weight in memory at a time;
3. the memory the construction freed is handed back to the operating system (:mod:`.host_memory`; measured on
   t5-v1_1-large, 2 ranks: 2.5 GB resident per rank after loading without it, 1.2 GB with it).

A separate LM head (T5 v1.1, flan-t5, mT5) is kept separate exactly when loading the directory with
transformers would keep it so (the files hold ``lm_head.weight`` with values other than the embedding's).
A hub id is read from its snapshot in the Hugging Face cache (fetched first when it is not there: config,
safetensors weights and tokenizer files).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..modeling.io import (
    file_shape,
    holds_separate_head,
    local_backbone_dir,
    read_flat_range,
    weight_files,
)
from .host_memory import release_freed_memory


def build_sharded_backbone(spec: str, ds_config: dict) -> nn.Module:
    """The backbone ``spec`` (a directory or a cached hub id) as a ZeRO-3-partitioned model; its
    ``config._name_or_path`` names the directory it was read from (what the backbone hash reads)."""
    directory = local_backbone_dir(spec, download=True)
    if directory is None:
        raise ConfigError(f"deepspeed.build_sharded reads the backbone from its files; {spec!r} has none (a preset "
                          "is saved into the run first): give a directory or a hub id")
    files = weight_files(directory)
    model = construct_sharded(directory, files, ds_config)
    load_partitions(model, files, directory)
    model.config._name_or_path = str(directory)
    model.eval()
    release_freed_memory()
    return model


def construct_sharded(directory: Path, files: dict[str, Path], ds_config: dict) -> nn.Module:
    """The backbone of ``directory/config.json`` under ``zero.Init`` in the engine's dtype, its weights partitioned
    and not initialised (:func:`load_partitions` fills them), tied as loading the files would tie them."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForSeq2SeqLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(str(directory))
    # the engine's dtype comes from the DeepSpeed config (an explicit dtype= is read as bf16 on a CPU by
    # DeepSpeed 0.19.8's Init._set_dtype, whatever it says)
    init = dict(config_dict_or_path=ds_config)
    with no_init_weights(), deepspeed.zero.Init(**init):
        model = AutoModelForSeq2SeqLM.from_config(config)
    model.tie_weights()  # under zero.Init the embedding's aliases are built as separate weights
    if holds_separate_head(files) and model.lm_head.weight is model.shared.weight:
        with no_init_weights(), deepspeed.zero.Init(**init):
            model.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # partitioned on creation
    return model


def load_partitions(model: nn.Module, files: dict[str, Path], directory: Path) -> None:
    """Copy each rank's slice of every weight from the files into its ZeRO-3 partition."""
    import torch.distributed as dist

    groups: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        params[id(p)] = p
    with _Reader() as reader, torch.no_grad():
        for pid, names in groups.items():
            stored = next((n for n in names if n in files), None)
            if stored is None:
                raise CheckpointError(f"backbone directory {directory} has no weight {names[0]!r} (nor "
                                      f"{', '.join(names[1:]) or 'an alias'}); is it a T5 checkpoint of this config?")
            p = params[pid]
            part = p.ds_tensor
            shape = reader.shape(files[stored], stored)
            if tuple(shape) != tuple(p.ds_shape):
                raise CheckpointError(f"{files[stored]}: {stored} has shape {tuple(shape)}, the model's config.json "
                                      f"says {tuple(p.ds_shape)}")
            n = part.ds_numel
            start = n * dist.get_rank(group=p.ds_process_group)
            end = min(start + n, p.ds_numel)
            part.zero_()
            if start < end:
                part[:end - start].copy_(reader.flat_range(files[stored], stored, shape, start, end))
        for name, buf in model.named_buffers():
            if name in files:
                shape = reader.shape(files[name], name)
                buf.copy_(reader.flat_range(files[name], name, shape, 0, buf.numel()).view(buf.shape))


class _Reader:
    """Reads weights, and flat ranges of weights, from safetensors files (each read maps the file only for that
    read, so that the pages it touched leave this process's resident memory with it) or from memory-mapped
    ``.bin`` files (each unpickled once, kept open for the whole load)."""

    def __init__(self) -> None:
        self.bins: dict[Path, Any] = {}

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bins.clear()

    def _bin(self, path: Path) -> Any:
        if path not in self.bins:
            self.bins[path] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return self.bins[path]

    def shape(self, path: Path, key: str) -> list[int]:
        return list(self._bin(path)[key].shape) if path.suffix != ".safetensors" else file_shape(path, key)

    def flat_range(self, path: Path, key: str, shape: list[int], start: int, end: int) -> torch.Tensor:
        """Elements ``start:end`` of the weight flattened, reading only the rows that hold them."""
        if path.suffix != ".safetensors":
            return self._bin(path)[key].reshape(-1)[start:end]
        return read_flat_range(path, key, shape, start, end)


__all__ = ["build_sharded_backbone", "construct_sharded", "load_partitions"]
