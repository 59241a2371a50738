"""T5 v1.0 (relu, tied head), v1.1 / flan-t5 (gated-gelu, untied head), mT5 and the offline presets."""
from __future__ import annotations

import pytest
import torch

from hyperscale.modeling import HyperscaleModel
from modeling_helpers import ADAPTER_METHODS, RF, TASKS, batch, build, clone_backbone, make_identity, tiny_backbone

MIXED = ["sst2", "rte", "cola", "sst2"]


@pytest.mark.parametrize("version", ["v1.0", "v1.1", "mt5"])
def test_backbone_family_attaches_and_runs(version):
    model = build("hyperformer++", version)
    bb = model.backbone
    cfg = bb.config
    if version == "v1.0":
        assert not cfg.is_gated_act and bb.lm_head.weight is bb.shared.weight
    else:
        assert cfg.is_gated_act and bb.lm_head.weight is not bb.shared.weight
        assert type(bb.encoder.block[0].layer[1].DenseReluDense).__name__.endswith("DenseGatedActDense")
    if version == "mt5":
        assert type(bb).__name__ == "MT5ForConditionalGeneration"
    hooked = sorted(n for n, m in bb.named_modules() if m._forward_hooks)
    assert hooked == sorted([f"encoder.block.{i}.layer.0.SelfAttention" for i in range(2)]
                            + [f"encoder.block.{i}.layer.1.DenseReluDense" for i in range(2)]
                            + [f"decoder.block.{i}.layer.0.SelfAttention" for i in range(2)]
                            + [f"decoder.block.{i}.layer.2.DenseReluDense" for i in range(2)])
    trainable_bb = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable_bb == {n for n, _ in bb.named_parameters() if n.endswith("layer_norm.weight")}
    assert len(trainable_bb) == 12
    b = batch(4)
    out = model(**b, task_ids=MIXED)
    out.loss.backward()
    assert model.bank.task_embeddings.grad is not None and bb.encoder.final_layer_norm.weight.grad is not None
    assert bb.lm_head.weight.grad is None
    gen = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], task_ids=MIXED, max_new_tokens=3)
    assert gen.shape[0] == 4
    # the identity adapter reproduces the bare backbone on this family too
    bare = clone_backbone(bb)
    make_identity(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**b, task_ids=MIXED).logits, bare(**b).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_mt5_every_method(method):
    model = build(method, "mt5")
    out = model(**batch(4), task_ids=MIXED)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("preset", ["t5-tiny", "t5-v1_1-tiny"])
def test_offline_presets(preset):
    torch.manual_seed(0)
    model = HyperscaleModel.from_backbone(f"preset:{preset}", TASKS, method="hyperformer++", reduction_factor=RF)
    assert model.config.backbone_id == f"preset:{preset}"
    assert model.bottleneck == 64 // RF
    assert model.config.backbone_config["feed_forward_proj"] == ("relu" if preset == "t5-tiny" else "gated-gelu")
    out = model(input_ids=torch.randint(2, 100, (2, 6)), labels=torch.randint(2, 100, (2, 3)), task_ids=["rte", "cola"])
    assert torch.isfinite(out.loss)


def test_non_t5_backbone_is_refused():
    class NotT5(torch.nn.Module):
        config = tiny_backbone().config

    with pytest.raises(ValueError, match="T5-family"):
        HyperscaleModel.from_backbone(NotT5(), TASKS)
