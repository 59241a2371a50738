"""save_pretrained / from_pretrained: round trip, contents, overwrite and backbone-hash refusals."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hyperscale.modeling import HyperscaleModel
from modeling_helpers import ALL_METHODS, RF, TASKS, batch, perturb_bank, tiny_backbone

MIXED = ["sst2", "rte", "cola", "sst2"]


@pytest.fixture
def backbone_dir(tmp_path):
    path = tmp_path / "t5-tiny"
    tiny_backbone(seed=0).save_pretrained(path)
    return path


def _wrapped(backbone_dir, method):
    model = HyperscaleModel.from_backbone(str(backbone_dir), TASKS, method=method, reduction_factor=RF).eval()
    if model.bank is not None:
        perturb_bank(model)
    else:  # finetune: change some weights so the round trip has something to carry
        with torch.no_grad():
            model.backbone.lm_head.weight.add_(0.1)
    return model


def _outputs(model):
    b = batch(len(MIXED))
    with torch.no_grad():
        logits = model(**b, task_ids=MIXED).logits
    gen = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], task_ids=MIXED,
                         max_new_tokens=4, do_sample=False)
    return logits, gen


@pytest.mark.parametrize("method", ALL_METHODS)
def test_round_trip_through_backbone_directory(method, backbone_dir, tmp_path):
    model = _wrapped(backbone_dir, method)
    assert model.config.backbone_id == str(backbone_dir.resolve())
    out = model.save_pretrained(tmp_path / "saved")
    loaded = HyperscaleModel.from_pretrained(out).eval()  # backbone re-read from its directory (from_pretrained)
    assert loaded.tasks == TASKS and loaded.config.method == method
    logits, gen = _outputs(model)
    logits2, gen2 = _outputs(loaded)
    assert torch.equal(logits, logits2)
    assert torch.equal(gen, gen2)

    # only the trainable weights are written
    written = load_file(str(out / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(written) == trainable
    if method != "finetune":
        assert not any(k.startswith("backbone.") and not k.endswith("layer_norm.weight") for k in written)
        assert sum(v.numel() for v in written.values()) == model.parameter_report()["trainable"]

    cfg = json.loads((out / "hyperscale_config.json").read_text())
    assert cfg["method"] == method and cfg["tasks"] == TASKS and cfg["reduction_factor"] == RF
    assert cfg["backbone_id"] == str(backbone_dir.resolve())
    assert cfg["backbone_config"]["d_model"] == 32 and cfg["backbone_config"]["num_layers"] == 2
    assert cfg["backbone_config"]["feed_forward_proj"] == "relu"
    assert cfg["adapter_ln_eps"] == 1e-5 and cfg["format_version"] == 1 and cfg["materialized_from"] is None
    assert (cfg["task_embedding_dim"], cfg["layer_embedding_dim"], cfg["position_embedding_dim"],
            cfg["projector_hidden_dim"], cfg["conditioning_dim"]) == (64, 64, 64, 128, 64)
    if method == "finetune":
        assert cfg["backbone_hash"] is None
    else:
        assert isinstance(cfg["backbone_hash"], str) and len(cfg["backbone_hash"]) == 64
        assert loaded.config.backbone_hash == cfg["backbone_hash"]


def test_save_refuses_to_overwrite(backbone_dir, tmp_path):
    model = _wrapped(backbone_dir, "hyperformer++")
    model.save_pretrained(tmp_path / "saved")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        model.bank.task_embeddings.add_(1.0)
    model.save_pretrained(tmp_path / "saved", overwrite=True)
    loaded = HyperscaleModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded.bank.task_embeddings, model.bank.task_embeddings)


def test_backbone_hash_refusal(backbone_dir, tmp_path):
    model = _wrapped(backbone_dir, "hyperformer++")
    model.save_pretrained(tmp_path / "saved")
    other = tmp_path / "other"
    tiny_backbone(seed=1).save_pretrained(other)
    with pytest.raises(ValueError, match="does not match"):
        HyperscaleModel.from_pretrained(tmp_path / "saved", backbone=str(other))
    with pytest.raises(ValueError, match="does not match"):
        HyperscaleModel.from_pretrained(tmp_path / "saved", backbone=tiny_backbone(seed=1))
    # a layer-norm change is not a different backbone (layer norms are trained and saved)
    same = tiny_backbone(seed=0)
    with torch.no_grad():
        same.encoder.final_layer_norm.weight.add_(1.0)
    HyperscaleModel.from_pretrained(tmp_path / "saved", backbone=same)
    # explicit opt-out
    HyperscaleModel.from_pretrained(tmp_path / "saved", backbone=str(other), check_hash=False)


def test_hash_is_stable_across_bf16_loading(backbone_dir, tmp_path):
    model = _wrapped(backbone_dir, "adapters")
    model.save_pretrained(tmp_path / "saved")
    loaded = HyperscaleModel.from_pretrained(tmp_path / "saved", torch_dtype=torch.bfloat16)
    assert next(loaded.backbone.parameters()).dtype == torch.bfloat16
    assert loaded.config.backbone_hash == model.config.backbone_hash


def test_in_memory_backbone_needs_explicit_backbone(tmp_path):
    model = HyperscaleModel.from_backbone(tiny_backbone(), TASKS, reduction_factor=RF)
    model.save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match="pass backbone="):
        HyperscaleModel.from_pretrained(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match="nothing-here does not exist"):
        HyperscaleModel.from_pretrained(tmp_path / "nothing-here")
    loaded = HyperscaleModel.from_pretrained(tmp_path / "saved", backbone=tiny_backbone())
    for (n, a), (_, b) in zip(sorted(model.trainable_state_dict().items()), sorted(loaded.trainable_state_dict().items())):
        assert torch.equal(a, b), n


def test_round_trip_v1_1_untied_backbone_directory(tmp_path):
    path = tmp_path / "t5-v1_1-tiny"
    tiny_backbone("v1.1").save_pretrained(path)
    model = HyperscaleModel.from_backbone(str(path), TASKS, reduction_factor=RF).eval()
    bb = model.backbone
    assert bb.lm_head.weight is not bb.shared.weight and not torch.equal(bb.lm_head.weight, bb.shared.weight)
    perturb_bank(model)
    model.save_pretrained(tmp_path / "saved")
    loaded = HyperscaleModel.from_pretrained(tmp_path / "saved").eval()
    assert loaded.backbone.lm_head.weight is not loaded.backbone.shared.weight
    logits, gen = _outputs(model)
    logits2, gen2 = _outputs(loaded)
    assert torch.equal(logits, logits2) and torch.equal(gen, gen2)
