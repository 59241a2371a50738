"""Activation memory of one training step, measured on fake tensors (no memory allocated).

The memory plan (:mod:`hyperscale.training.plan`) needs the peak of what one micro-batch's forward and backward
keep alive besides the model's weights. It is measured, not guessed from a formula: the run's own model (the frozen
T5 with hyperscale's hooks and hypernetwork, built from the run config's architecture) runs one training step (the
trainer's loss, :func:`hyperscale.training.engine.forward_loss`, then ``backward``) under torch's
``FakeTensorMode`` (shapes and dtypes only: an 11B model plans on a laptop), with Hugging Face gradient
checkpointing as the run configures it, while :class:`LiveStorageTracker` follows every tensor storage the step
creates.

The tracker counts *storages*, not tensors: a view, an in-place result or a tensor sharing a storage adds nothing;
a storage is counted from the op that creates it until the last tensor on it dies (weakref finalizers), which is
when the allocator gets it back. Storages that existed before the step (the weights, the batch) are never counted,
nor are views of them (``weight.t()``). Gradients of the trainable parameters are dropped as soon as they are
accumulated (DeepSpeed moves them into its own buffers, which the plan counts as model states), so they count
only while they are being produced. Checked on real CPU tensors against the CPU allocator's own accounting (the
profiler's memory events): equal to 0.1 % with and without checkpointing for t5-small shapes (tests/training/
test_plan.py). Both rules about views matter (t5-small, batch 8, 128 + 8 tokens, fp32, allocator peak 330 MiB):
counting views of the weights (``weight.t()`` in every linear) as new storages gave 570 MiB, and not following
views of the step's own storages (a view saved for backward outlives its base) gave 183 MiB.

Approximations, stated: the step runs on the CPU's kernels (fake tensors of a CPU-only torch cannot take CUDA
kernels). For attention that is PyTorch's SDPA (the attention Hugging Face T5 uses) with its CPU flash kernel,
which like the memory-efficient CUDA kernel a GPU run uses keeps a log-sum-exp, not the attention matrix;
workspace a CUDA kernel takes (cuBLAS, the caching allocator's rounding) is not seen here and belongs to the plan's
allowance.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import ConfigError
from ..modeling.config import HyperscaleConfig
from ..modeling.model import HyperscaleModel
from ..modeling.presets import PRESETS, backbone_from_config, preset_config, preset_ties_head
from .config import RunConfig
from .engine import forward_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LiveStorageTracker(TorchDispatchMode):
    """Bytes of the tensor storages created while the mode is active and still alive: ``live`` now, ``peak`` the
    most at any moment. Works on real and on fake tensors alike (a fake storage has a size, not memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage key -> [tensors alive on it, bytes]

    def _watch(self, t: torch.Tensor, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            nbytes = t.untyped_storage().nbytes()
            self._storages[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        seen: set[int] = set()
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or id(t) in seen:
                continue
            seen.add(id(t))
            key = _key(t)
            # a new storage, or another tensor on one this step created; never a view of a weight or the batch
            if key not in inputs or key in self._storages:
                self._watch(t, key)
        return out


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


# ------------------------------------------------------------------------------------------- the model
def backbone_config(spec: str) -> tuple[Any, bool]:
    """(T5 config, tied LM head?) of the run's ``model.backbone`` without loading weights: ``preset:NAME``, a local
    directory (its ``config.json``), or a hub id, read as the preset of the same name (``google/flan-t5-xxl`` ->
    ``flan-t5-xxl``) or from the Hugging Face cache. Raises ConfigError when none of these knows it."""
    from transformers import AutoConfig

    if spec.startswith("preset:") or spec in PRESETS:
        return preset_config(spec), preset_ties_head(spec)
    if os.path.isdir(spec):
        raw_path = Path(spec) / "config.json"
        if not raw_path.is_file():
            raise ConfigError(f"model.backbone {spec!r} has no config.json; give a save_pretrained directory or "
                              "preset:NAME")
        raw = json.loads(raw_path.read_text())
        # transformers 5 forces tie_word_embeddings=True on T5/mT5 configs; the file says what the checkpoint holds
        return AutoConfig.from_pretrained(spec), raw.get("tie_word_embeddings", True) is not False
    base = spec.rstrip("/").rsplit("/", 1)[-1]
    if base in PRESETS:
        return preset_config(base), preset_ties_head(base)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
    except Exception:  # an id the hub client refuses: no cached file either
        cached = None
    if isinstance(cached, str) and os.path.isfile(cached):
        raw = json.loads(Path(cached).read_text())
        return AutoConfig.from_pretrained(os.path.dirname(cached)), raw.get("tie_word_embeddings", True) is not False
    raise ConfigError(f"model.backbone {spec!r}: its architecture is unknown offline (not a preset, not a local "
                      f"directory, no config.json in the Hugging Face cache); plan with model.backbone=preset:NAME "
                      f"(presets: {', '.join(sorted(PRESETS))}) or a local directory")


def build_model(cfg: RunConfig, dtype: torch.dtype, context: Any) -> HyperscaleModel:
    """The run's model (architecture, tasks, dropout, gradient checkpointing as the trainer sets them up) built
    inside ``context`` (``torch.device("meta")`` or a ``FakeTensorMode``) in ``dtype``: no weights allocated."""
    bcfg, tied = backbone_config(cfg.model.backbone)
    config = HyperscaleConfig(tasks=list(cfg.data.tasks), backbone_id=cfg.model.backbone, **cfg.model.arch_dict())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a fake module cannot be cast afterwards ("Couldn't swap Embedding.weight")
    try:
        with context:
            backbone = backbone_from_config(bcfg, tied)
            model = HyperscaleModel(backbone, config, compute_hash=False)
    finally:
        torch.set_default_dtype(previous)
    if cfg.model.dropout is not None:  # as the recipe applies it
        model.backbone.config.dropout_rate = cfg.model.dropout
        for mod in model.backbone.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = cfg.model.dropout
    return model


def cache_settings(model: HyperscaleModel) -> dict[int, tuple[Any, Any]]:
    """The ``use_cache`` setting of every config in the backbone (the encoder and decoder stacks have their own)."""
    return {id(m.config): (m.config, getattr(m.config, "use_cache", None))
            for m in model.backbone.modules() if hasattr(m, "config")}


def set_checkpointing(model: HyperscaleModel, on: bool, cache: Optional[dict] = None) -> None:
    """Hugging Face gradient checkpointing as the recipe enables it (non-reentrant), or off. ``cache``
    (:func:`cache_settings` taken before): while checkpointing, ``use_cache`` is off in every stack, which is
    what transformers does itself in a checkpointed training forward, minus its warning; off again, restored."""
    with warnings.catch_warnings():  # transformers 5 renames these (FutureWarning); the recipe calls the same
        warnings.simplefilter("ignore", FutureWarning)
        if on:
            model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.backbone.gradient_checkpointing_disable()
    for config, original in (cache or {}).values():
        config.use_cache = False if on else original


# ----------------------------------------------------------------------------------------- one step
@contextlib.contextmanager
def _drop_parameter_gradients(model: torch.nn.Module) -> Iterator[None]:
    handles = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
               for p in model.parameters() if p.requires_grad]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def make_batch(batch_size: int, source_length: int, target_length: int) -> dict[str, torch.Tensor]:
    """A training batch of full-length rows (every token real: the most a batch of these lengths holds)."""
    ids = torch.full((batch_size, source_length), 5, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.full((batch_size, target_length), 7, dtype=torch.long)}


def step_peak(model: HyperscaleModel, batch: dict[str, torch.Tensor], task: Any = 0,
              tracker: Optional[LiveStorageTracker] = None) -> int:
    """Peak bytes of the storages one training step creates (forward with the trainer's loss, backward), in
    whatever mode the caller has entered (a ``FakeTensorMode`` for the plan, none for real tensors)."""
    tracker = tracker or LiveStorageTracker()
    model.train()
    with _drop_parameter_gradients(model), tracker:
        loss, _ = forward_loss(model, batch, task)
        loss.backward()
        del loss
    return tracker.peak


class FakeStepper:
    """The run's model on fake tensors, built once; :meth:`peak` measures a step at a batch size and a
    checkpointing setting (a step of an 11B model takes seconds: fake tensors cost per op, not per byte)."""

    def __init__(self, cfg: RunConfig) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.cfg = cfg
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.model = build_model(cfg, DTYPES[cfg.train.precision], self.mode)
        self._cache_settings = cache_settings(self.model)
        self._cache: dict[tuple[int, bool], int] = {}

    def peak(self, batch_size: int, checkpointing: bool) -> int:
        key = (int(batch_size), bool(checkpointing))
        if key not in self._cache:
            set_checkpointing(self.model, checkpointing, self._cache_settings)
            d = self.cfg.data
            n_tasks = len(self.model.tasks)
            # same-task batches take one task's weights; mixed batches gather each example's (more memory)
            task: Any = 0 if self.cfg.sampler.mode == "same-task" else [i % n_tasks for i in range(batch_size)]
            with self.mode:
                batch = make_batch(batch_size, d.max_source_length, d.max_target_length)
                self._cache[key] = step_peak(self.model, batch, task)
        return self._cache[key]
