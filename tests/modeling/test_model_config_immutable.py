"""HyperscaleConfig is never mutated: not by construction, add_task, from_pretrained or an export-style reload."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

import hyperscale.modeling.model as model_mod
from hyperscale.modeling import HyperscaleConfig, HyperscaleModel
from hyperscale.modeling.io import backbone_hash, frozen_params
from modeling_helpers import RF, TASKS, perturb_bank, tiny_backbone


def _snapshot(cfg: HyperscaleConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))


def test_config_is_frozen_and_owns_its_lists():
    tasks = list(TASKS)
    cfg = HyperscaleConfig(method="adapters", tasks=tasks)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.backbone_hash = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tasks = ["a"]  # type: ignore[misc]
    tasks.append("later")  # the caller's list is not the config's
    assert cfg.tasks == TASKS
    new = dataclasses.replace(cfg, backbone_hash="x")
    assert new.backbone_hash == "x" and cfg.backbone_hash is None
    with pytest.raises(ValueError, match="unique"):  # replace validates again
        dataclasses.replace(cfg, tasks=["a", "a"])


def test_construction_does_not_mutate_the_config():
    cfg = HyperscaleConfig(method="hyperformer++", tasks=TASKS, reduction_factor=RF, backbone_id="mine")
    before = _snapshot(cfg)
    model = HyperscaleModel(tiny_backbone(), cfg)
    assert _snapshot(cfg) == before and cfg.backbone_hash is None and cfg.backbone_config == {}
    # the derived values live in the model's own config
    assert model.config is not cfg
    assert model.config.backbone_hash == backbone_hash(frozen_params(model.backbone))
    assert len(model.config.backbone_hash) == 64
    assert model.config.backbone_config["d_model"] == 32 and model.config.backbone_id == "mine"
    assert dataclasses.replace(model.config, backbone_hash=None, backbone_config={}) == cfg
    # a given hash is kept, not recomputed
    given = dataclasses.replace(cfg, backbone_hash="0" * 64)
    assert HyperscaleModel(tiny_backbone(), given).config.backbone_hash == "0" * 64


def test_add_task_and_hash_update_replace_the_config():
    model = HyperscaleModel.from_backbone(tiny_backbone(), TASKS, method="adapters", reduction_factor=RF)
    old = model.config
    before = _snapshot(old)
    model.add_task("new")
    assert _snapshot(old) == before and model.config.tasks == TASKS + ["new"] and model.config is not old
    old = model.config
    with torch.no_grad():
        model.backbone.shared.weight.add_(1.0)
    h = model.update_backbone_hash()
    assert model.config.backbone_hash == h != old.backbone_hash
    assert old.backbone_hash == before["backbone_hash"]


def _spy_read_config(monkeypatch, module, name="read_config"):
    """Record every config the loader reads, with a snapshot taken when it was read."""
    seen = []
    real = getattr(module, name)

    def spy(*a, **kw):
        cfg = real(*a, **kw)
        seen.append((cfg, _snapshot(cfg)))
        return cfg

    monkeypatch.setattr(module, name, spy)
    return seen


def test_from_pretrained_does_not_mutate_the_read_config(tmp_path, monkeypatch):
    model = HyperscaleModel.from_backbone(tiny_backbone(), TASKS, reduction_factor=RF)
    saved_hash = model.config.backbone_hash
    model.save_pretrained(tmp_path / "s")
    seen = _spy_read_config(monkeypatch, model_mod)
    loaded = HyperscaleModel.from_pretrained(tmp_path / "s", backbone=tiny_backbone())
    with pytest.raises(ValueError, match="does not match"):
        HyperscaleModel.from_pretrained(tmp_path / "s", backbone=tiny_backbone(seed=1))
    other = HyperscaleModel.from_pretrained(tmp_path / "s", backbone=tiny_backbone(seed=1), check_hash=False)
    assert len(seen) == 3 and all(_snapshot(cfg) == snap for cfg, snap in seen)
    assert all(cfg.backbone_hash == saved_hash for cfg, _ in seen)
    # the loaded models carry the saved hash (the one their weights were trained against)
    assert loaded.config.backbone_hash == saved_hash and other.config.backbone_hash == saved_hash


def _fake_zero0_checkpoint(root, model):
    """A checkpoint directory as the trainer writes it at ZeRO-0 (only what export reads)."""
    tag = root / "step-00000001"
    tag.mkdir(parents=True)
    (tag / "run_config.yaml").write_text(yaml.safe_dump({"deepspeed": {"zero_stage": 0}}))
    torch.save({"module": {k: v.clone() for k, v in model.trainable_state_dict().items()}},
               tag / "mp_rank_00_model_states.pt")
    (tag / "hyperscale_config.json").write_text(json.dumps(model.config.to_dict()))
    (tag / "COMPLETE").write_text("ok\n")  # a checkpoint from before digests were recorded
    return tag


def test_export_style_reload_does_not_mutate_the_config(tmp_path, monkeypatch):
    from hyperscale.training import export as export_mod

    bb_dir = tmp_path / "t5-tiny"
    tiny_backbone().save_pretrained(bb_dir)
    model = HyperscaleModel.from_backbone(str(bb_dir), TASKS, reduction_factor=RF).eval()
    perturb_bank(model)
    tag = _fake_zero0_checkpoint(tmp_path / "checkpoints", model)

    seen = []
    real_from_dict = HyperscaleConfig.from_dict.__func__

    def spy(cls, d):
        cfg = real_from_dict(cls, d)
        seen.append((cfg, _snapshot(cfg)))
        return cfg

    monkeypatch.setattr(export_mod.HyperscaleConfig, "from_dict", classmethod(spy))
    out = export_mod.export_checkpoint(tag, tmp_path / "export", materialize=True)
    assert seen and all(_snapshot(cfg) == snap for cfg, snap in seen)
    exported = json.loads((out / "hyperscale_config.json").read_text())
    assert exported["backbone_hash"] == model.config.backbone_hash
    mat = json.loads((out / "materialized" / "hyperscale_config.json").read_text())
    assert mat["backbone_hash"] == model.config.backbone_hash and mat["materialized_from"] == "hyperformer++"
    monkeypatch.undo()
    loaded = HyperscaleModel.from_pretrained(out).eval()
    assert loaded.config.backbone_hash == model.config.backbone_hash
    for (n, a), (_, b) in zip(sorted(model.trainable_state_dict().items()),
                              sorted(loaded.trainable_state_dict().items())):
        assert torch.equal(a, b), n
    # a different backbone is refused by the export's own hash check
    other = tmp_path / "other"
    tiny_backbone(seed=1).save_pretrained(other)
    with pytest.raises(ValueError, match="weight hash mismatch"):
        export_mod.export_checkpoint(tag, tmp_path / "export2", backbone=str(other))
