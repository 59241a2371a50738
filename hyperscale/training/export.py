"""ZeRO checkpoint -> standalone weights (``HyperscaleModel.save_pretrained`` format).

Uses DeepSpeed's own ``zero_to_fp32`` API for ZeRO 1-3 checkpoints of any number of ranks (the
fp32 master copies of the trainable parameters); a ZeRO-0 checkpoint holds its module weights in
``mp_rank_00_model_states.pt``, which ``zero_to_fp32`` cannot read.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch
import yaml

from ..modeling.model import CONFIG_NAME, HyperscaleConfig, HyperscaleModel, load_backbone
from .checkpoint import COMPLETE, resolve_checkpoint


def consolidated_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    run_cfg = yaml.safe_load((ckpt_dir / "run_config.yaml").read_text())
    stage = int(run_cfg["deepspeed"]["zero_stage"])
    if stage == 0:
        states = torch.load(ckpt_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        sd = states["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name,
                                                      exclude_frozen_parameters=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def export_checkpoint(checkpoint: Path | str, out: Path | str, materialize: bool = False,
                      backbone: Optional[str] = None, overwrite: bool = False) -> Path:
    ckpt_dir = resolve_checkpoint(str(checkpoint), Path(checkpoint))
    if ckpt_dir is None or not (ckpt_dir / COMPLETE).is_file():
        raise FileNotFoundError(f"no complete checkpoint at {checkpoint}")
    out = Path(out)
    if not overwrite and (out / CONFIG_NAME).exists():
        raise FileExistsError(f"{out} already holds an export; choose another directory or pass --overwrite")
    config = HyperscaleConfig.from_dict(json.loads((ckpt_dir / CONFIG_NAME).read_text()))
    saved_hash = config.backbone_hash
    model_bb, _ = load_backbone(backbone or config.backbone_id)
    config.backbone_hash = None
    model = HyperscaleModel(model_bb, config)
    if saved_hash and config.backbone_hash != saved_hash:
        raise ValueError(f"backbone {backbone or config.backbone_id!r} differs from the one {ckpt_dir} was trained on "
                         "(weight hash mismatch); pass --backbone with the original")
    model.load_trainable_state_dict(consolidated_state_dict(ckpt_dir), source=str(ckpt_dir))
    model.save_pretrained(out, overwrite=overwrite)
    if (ckpt_dir / "tokenizer").is_dir():
        shutil.copytree(ckpt_dir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    if materialize:
        mat = model.materialize()
        mat.save_pretrained(out / "materialized", overwrite=overwrite)
        if (out / "tokenizer").is_dir():
            shutil.copytree(out / "tokenizer", out / "materialized" / "tokenizer", dirs_exist_ok=True)
    return out
