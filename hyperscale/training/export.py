"""ZeRO checkpoint -> standalone weights (``HyperscaleModel.save_pretrained`` format).

Uses DeepSpeed's own ``zero_to_fp32`` API for ZeRO 1-3 checkpoints of any number of ranks (the
fp32 master copies of the trainable parameters); a ZeRO-0 checkpoint holds its module weights in
``mp_rank_00_model_states.pt``, which ``zero_to_fp32`` cannot read.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from ..data.tokenization import default_tokenizer, load_tokenizer
from ..errors import CheckpointError, CheckpointNotFoundError, RunExistsError
from ..modeling.model import (
    CONFIG_NAME,
    HyperscaleConfig,
    HyperscaleModel,
    load_backbone,
)
from .checkpoint import COMPLETE, resolve_checkpoint, safe_load


def _bf16_optimizer_state_dict(ckpt_dir: Path, files: list[Path]) -> dict[str, torch.Tensor]:
    """fp32 master weights from DeepSpeed's BF16_Optimizer files (bf16 with ZeRO-1), which ``zero_to_fp32``
    does not read: each rank holds a contiguous slice of every parameter group, the last one padded."""
    import re

    files = sorted(files, key=lambda f: int(re.search(r"pp_rank_(\d+)_", f.name).group(1)))
    states = [safe_load(f)["optimizer_state_dict"] for f in files]
    model_states = safe_load(ckpt_dir / "mp_rank_00_model_states.pt")
    sd: dict[str, torch.Tensor] = {}
    for g, shapes in enumerate(model_states["param_shapes"]):
        flat = torch.cat([st["single_partition_of_fp32_groups"][g].float() for st in states])
        offset = 0
        for name, shape in shapes.items():
            n = int(torch.Size(shape).numel())
            sd[name] = flat[offset:offset + n].view(shape).clone()
            offset += n
        padding = sum(int(st["group_paddings"][g]) for st in states)
        if offset + padding != flat.numel():
            raise CheckpointError(f"{ckpt_dir}: parameter group {g} holds {flat.numel()} values, expected {offset} + "
                             f"{padding} padding; is this checkpoint complete?")
    return sd


def consolidated_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    run_cfg = yaml.safe_load((ckpt_dir / "run_config.yaml").read_text())
    stage = int(run_cfg["deepspeed"]["zero_stage"])
    # ZeRO-1 + bf16 runs DeepSpeed's BF16_Optimizer; ZeRO 2/3 + bf16 name their (zero_to_fp32-readable)
    # optimizer files the same way, and a ZeRO-3 checkpoint has no mp_rank_00_model_states.pt
    bf16_files = list(ckpt_dir.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    if bf16_files and stage == 1:
        sd = _bf16_optimizer_state_dict(ckpt_dir, bf16_files)
    elif stage == 0:
        states = safe_load(ckpt_dir / "mp_rank_00_model_states.pt")
        sd = states["module"]
    else:
        # DeepSpeed only here: exports and inference run without it
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name,
                                                      exclude_frozen_parameters=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def export_checkpoint(checkpoint: Path | str, out: Path | str, materialize: bool = False,
                      backbone: Optional[str] = None, overwrite: bool = False) -> Path:
    ckpt_dir = resolve_checkpoint(str(checkpoint), Path(checkpoint))
    if ckpt_dir is None or not (ckpt_dir / COMPLETE).is_file():
        raise CheckpointNotFoundError(f"no complete checkpoint at {checkpoint}")
    out = Path(out)
    if not overwrite and (out / CONFIG_NAME).exists():
        raise RunExistsError(f"{out} already holds an export; choose another directory or pass --overwrite")
    config = HyperscaleConfig.from_dict(json.loads((ckpt_dir / CONFIG_NAME).read_text()))
    saved_hash = config.backbone_hash
    model_bb, _ = load_backbone(backbone or config.backbone_id)
    # built without the recorded hash, the model hashes this backbone itself (config stays as read)
    model = HyperscaleModel(model_bb, dataclasses.replace(config, backbone_hash=None))
    if saved_hash and model.config.backbone_hash != saved_hash:
        raise CheckpointError(f"backbone {backbone or config.backbone_id!r} differs from the one {ckpt_dir} was trained on "
                         "(weight hash mismatch); pass --backbone with the original")
    sd = consolidated_state_dict(ckpt_dir)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{ckpt_dir} holds non-finite weights ({', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}):"
                              " the run diverged before this checkpoint; export an earlier one")
    model.load_trainable_state_dict(sd, source=str(ckpt_dir))
    model.save_pretrained(out, overwrite=overwrite)
    if (ckpt_dir / "tokenizer").is_dir():
        shutil.copytree(ckpt_dir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    if materialize:
        mat = model.materialize()
        mat.save_pretrained(out / "materialized", overwrite=overwrite)
        if (out / "tokenizer").is_dir():
            shutil.copytree(out / "tokenizer", out / "materialized" / "tokenizer", dirs_exist_ok=True)
    return out


def load_export(path: str | Path, backbone: Optional[str] = None) -> tuple[HyperscaleModel, Any]:
    """An export (``hyperscale export`` or ``save_pretrained``) and its tokenizer, ready for inference on the CPU."""
    model = HyperscaleModel.from_pretrained(path, backbone=backbone)
    model.eval()
    tok_dir = Path(path) / "tokenizer"
    tokenizer = load_tokenizer(str(tok_dir)) if tok_dir.is_dir() else default_tokenizer()
    return model, tokenizer
