"""Import of checkpoints written by the reference HyperFormer++ implementation.

The reference saves a whole ``T5ForConditionalGeneration`` state dict (``pytorch_model.bin``): the
frozen T5 weights under the usual Hugging Face names, the trained T5 layer norms, and per stack
(``encoder.`` / ``decoder.``) an ``adapter_layers_hyper_net`` with separate generators for every
adapter tensor, plus one task embedding per task under ``task_embedding_controller``.

``reference_to_hyperscale`` renames (and fuses) those keys into this project's ``hyperformer++``
parameter names: the six generators of a stack become the rows of one ``generator`` Linear, in
the order documented in ``hypernet.py`` (down weight, down bias, up weight, up bias, LayerNorm
gamma, LayerNorm beta); the task embeddings are stacked in the requested task order; every other
key is a T5 weight and is returned under ``backbone.``.

``load_reference_checkpoint`` loads the trainable part (hypernetworks, task embeddings, T5 layer
norms) into a ``HyperscaleModel`` and checks that the frozen T5 weights of the file equal the
model's backbone (or takes them from the file with ``backbone="load"``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..errors import CheckpointError, CheckpointNotFoundError

HYPER = "adapter_layers_hyper_net."
TASK_PREFIX = "task_embedding_controller.task_to_embeddings."
STACKS = ("encoder", "decoder")
REFERENCE_WEIGHTS_NAME = "pytorch_model.bin"

# reference key (inside `<stack>.adapter_layers_hyper_net.`) -> our key (inside `bank.stacks.<stack>.`)
DIRECT: dict[str, str] = {
    "layer_id_embeddings.weight": "layer_embeddings.weight",
    # row 0 = feed-forward adapter, row 1 = self-attention adapter: the same order as attach.POSITIONS
    "adapters_block_type.weight": "position_embeddings.weight",
    "task_hypernet.task_embeding_generator.0.weight": "projector.0.weight",
    "task_hypernet.task_embeding_generator.0.bias": "projector.0.bias",
    "task_hypernet.task_embeding_generator.2.weight": "projector.2.weight",
    "task_hypernet.task_embeding_generator.2.bias": "projector.2.bias",
    "LayerNorm.weight": "cond_norm.weight",
    "LayerNorm.bias": "cond_norm.bias",
}
# the generators fused into our `generator` Linear, in row order (see hypernet.generator_sizes)
GENERATORS: tuple[str, ...] = (
    "down_sampler_hyper_net.weight_generator.0",  # [m*d]  -> down weight, row-major [m, d]
    "down_sampler_hyper_net.bias_generator.0",  # [m]    -> down bias
    "up_sampler_hyper_net.weight_generator.0",  # [d*m]  -> up weight, row-major [d, m]
    "up_sampler_hyper_net.bias_generator.0",  # [d]    -> up bias
    "post_layernorm_hypernet.weight_generator",  # [d]    -> adapter LayerNorm gamma
    "post_layernorm_hypernet.bias_generator",  # [d]    -> adapter LayerNorm beta
)
# keys older transformers versions saved that upstream T5 no longer has (and never used)
LEGACY_T5_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _fmt(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def reference_tasks(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Task names of a reference state dict, in the file's order."""
    return [k[len(TASK_PREFIX):] for k in state_dict if k.startswith(TASK_PREFIX)]


def _check_generator_shapes(stack: str, parts: list[torch.Tensor]) -> None:
    rows = [p.shape[0] for p in parts]
    m, d = rows[1], rows[3]
    want = [m * d, m, d * m, d, d, d]
    if rows != want:
        names = ", ".join(f"{g}={r}" for g, r in zip(GENERATORS, rows))
        raise CheckpointError(f"reference {stack} generators have inconsistent sizes ({names}); with bottleneck m={m} "
                         f"and d_model d={d} they should be {want}")


def reference_to_hyperscale(state_dict: dict[str, torch.Tensor],
                            tasks: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
    """Map a full reference state dict to ``hyperformer++`` parameter names of a ``HyperscaleModel``.

    ``tasks`` sets the order (and selection) of the stacked task embeddings; by default the file's
    order. Returns hypernetwork keys under ``bank.`` and every T5 key under ``backbone.``.
    """
    file_tasks = reference_tasks(state_dict)
    if not file_tasks:
        raise CheckpointError(f"not a reference HyperFormer++ state dict: no `{TASK_PREFIX}<task>` keys")
    order = list(file_tasks) if tasks is None else list(tasks)
    absent = [t for t in order if t not in file_tasks]
    if absent:
        raise CheckpointError(f"tasks {absent} are not in the reference checkpoint; its tasks: {file_tasks}; "
                         f"requested: {order}")
    out: dict[str, torch.Tensor] = {
        "bank.task_embeddings": torch.stack([state_dict[TASK_PREFIX + t] for t in order], 0),
    }
    used = {TASK_PREFIX + t for t in file_tasks}
    for stack in STACKS:
        pre = f"{stack}.{HYPER}"
        ours = f"bank.stacks.{stack}."
        wanted = [pre + k for k in DIRECT] + [f"{pre}{g}.{p}" for g in GENERATORS for p in ("weight", "bias")]
        missing = [k for k in wanted if k not in state_dict]
        if missing:
            raise CheckpointError(f"reference checkpoint lacks {len(missing)} hypernetwork key(s): {_fmt(missing)}")
        for ref, mine in DIRECT.items():
            out[ours + mine] = state_dict[pre + ref]
        for p in ("weight", "bias"):
            parts = [state_dict[f"{pre}{g}.{p}"] for g in GENERATORS]
            if p == "weight":
                _check_generator_shapes(stack, parts)
            out[ours + "generator." + p] = torch.cat(parts, 0)
        used.update(wanted)
    unknown = [k for k in state_dict if HYPER in k and k not in used]
    if unknown:
        raise CheckpointError(f"unexpected hypernetwork key(s) in the reference checkpoint: {_fmt(unknown)}")
    for k, v in state_dict.items():
        if k not in used and not k.startswith(TASK_PREFIX):
            out["backbone." + k] = v
    return out


def _read(path_or_state_dict: Union[str, os.PathLike, dict]) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(path_or_state_dict, dict):
        return path_or_state_dict, "reference state dict"
    path = Path(path_or_state_dict)
    if path.is_dir():
        cands = [path / REFERENCE_WEIGHTS_NAME, path / "model.safetensors"]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise CheckpointNotFoundError(f"{path} holds neither {REFERENCE_WEIGHTS_NAME} nor model.safetensors")
        path = found[0]
    if not path.is_file():
        raise CheckpointNotFoundError(f"reference checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), str(path)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch serialization cannot be memory-mapped
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return sd, str(path)


def load_reference_checkpoint(model: Any, path_or_state_dict: Union[str, os.PathLike, dict],
                              backbone: str = "check", allow_extra_tasks: bool = False) -> dict[str, Any]:
    """Load a reference ``pytorch_model.bin`` (path, its directory, or the state dict) into ``model``.

    ``model`` must be a ``hyperformer++`` ``HyperscaleModel`` whose tasks all appear in the file.
    The hypernetworks, task embeddings (in the model's task order) and trained T5 layer norms are
    copied. The frozen T5 weights of the file must equal the model's backbone (``backbone="check"``,
    the default) or are copied into it (``backbone="load"``; the backbone hash is then recomputed).
    Returns a summary: tasks, number of tensors loaded, backbone mode.
    """
    if backbone not in ("check", "load"):
        raise CheckpointError(f"backbone must be 'check' or 'load', got {backbone!r}")
    if getattr(model.config, "method", None) != "hyperformer++":
        raise CheckpointError(f"reference checkpoints are HyperFormer++ models: build the model with "
                         f"method='hyperformer++' (got {model.config.method!r})")
    sd, source = _read(path_or_state_dict)
    file_tasks = reference_tasks(sd)
    model_tasks = list(model.config.tasks)
    if not file_tasks:
        raise CheckpointError(f"{source} is not a reference HyperFormer++ checkpoint: no `{TASK_PREFIX}<task>` keys")
    absent = [t for t in model_tasks if t not in file_tasks]
    extra = [t for t in file_tasks if t not in model_tasks]
    if absent or (extra and not allow_extra_tasks):
        raise CheckpointError(
            f"task names differ between the model and {source}: model tasks {model_tasks}, checkpoint tasks "
            f"{file_tasks}" + (f"; not in the checkpoint: {absent}" if absent else "")
            + (f"; not in the model: {extra} (pass allow_extra_tasks=True to ignore them)" if extra else "")
        )
    mapped = reference_to_hyperscale(sd, tasks=model_tasks)
    for k in LEGACY_T5_KEYS:
        mapped.pop("backbone." + k, None)

    # every name of every parameter, tied aliases included (shared / embed_tokens / lm_head)
    aliases: dict[int, list[str]] = {}
    params: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
        params[name] = p
    unexpected = sorted(k for k in mapped if k not in params)
    covered = {id(params[k]) for k in mapped if k in params}
    missing = sorted(names[0] for pid, names in aliases.items() if pid not in covered)
    if unexpected or missing:
        def ref_name(k: str) -> str:
            return k[len("backbone."):] if k.startswith("backbone.") else k

        raise CheckpointError(
            f"{source} does not fit this model: missing {len(missing)} key(s) [{_fmt([ref_name(k) for k in missing])}]"
            f", unexpected {len(unexpected)} key(s) [{_fmt([ref_name(k) for k in unexpected])}]"
        )
    bad_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(params[k].shape)}"
                 for k, v in mapped.items() if tuple(v.shape) != tuple(params[k].shape)]
    if bad_shape:
        raise CheckpointError(f"{source}: shape mismatch (wrong d_model, reduction factor, layer count or embedding "
                         f"sizes?): {_fmt(bad_shape, 5)}")

    for pid, names in aliases.items():
        given = [n for n in names if n in mapped]
        if len(given) > 1 and not all(torch.equal(mapped[given[0]], mapped[n]) for n in given[1:]):
            raise CheckpointError(f"{source}: {', '.join(g[len('backbone.'):] for g in given)} are one tied weight in "
                             "the model but differ in the checkpoint (tied vs untied embeddings?)")

    copy_keys, frozen_keys = [], []
    for k in mapped:
        if k.startswith("backbone.") and not params[k].requires_grad:
            frozen_keys.append(k)
        else:
            copy_keys.append(k)
    if backbone == "check":
        differ = [k[len("backbone."):] for k in frozen_keys
                  if not torch.equal(mapped[k].to(device=params[k].device, dtype=params[k].dtype), params[k].detach())]
        if differ:
            raise CheckpointError(
                f"{len(differ)} frozen T5 weight(s) of {source} differ from the model's backbone: {_fmt(differ)}; "
                "build the model on the backbone the reference was trained from, or pass backbone='load' to take "
                "the T5 weights from the checkpoint"
            )
    else:
        copy_keys += frozen_keys
    with torch.no_grad():
        for k in copy_keys:
            params[k].copy_(mapped[k].to(dtype=params[k].dtype))
    if backbone == "load":
        model.update_backbone_hash()  # a new config on the model; a no-op for finetune
    return {"source": source, "tasks": model_tasks, "loaded": len(copy_keys), "backbone": backbone}


__all__ = ["reference_to_hyperscale", "load_reference_checkpoint", "reference_tasks", "GENERATORS", "DIRECT"]
