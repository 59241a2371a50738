"""Trainable/frozen sets per method and parameter counts against closed-form formulas."""
from __future__ import annotations

import pytest
import torch

from hyperscale.modeling.presets import preset_config
from hyperscale.cli.params import build_report
from modeling_helpers import ALL_METHODS, TASKS, build

E_T = E_L = E_P = 64  # task, layer-id, position embeddings
HID, COND = 128, 64  # projector hidden, conditioning vector


def layer_norm_count(d: int, n_enc: int, n_dec: int) -> int:
    # encoder block: 2 norms, decoder block: 3, plus one final norm per stack
    return d * (2 * n_enc + 1 + 3 * n_dec + 1)


def adapter_formula(method: str, d: int, n_enc: int, n_dec: int, n_tasks: int, rf: int) -> int:
    """Trainable parameters of ``method`` (adapter part + T5 layer norms)."""
    m = d // rf
    gen_out = m * d + m + d * m + d + d + d  # down w, down b, up w, up b, gamma, beta
    total = layer_norm_count(d, n_enc, n_dec)
    for n_layers in (n_enc, n_dec):
        slots = 2 * n_layers
        if method == "hyperformer++":
            total += n_layers * E_L + 2 * E_P  # layer-id and position embeddings
            total += (E_T + E_L + E_P) * HID + HID + HID * COND + COND  # projector
            total += 2 * COND  # LayerNorm on I
            total += (COND + 1) * gen_out  # one shared generator
        elif method == "hyperformer":
            total += E_T * HID + HID + HID * COND + COND + 2 * COND
            total += slots * (COND + 1) * gen_out  # a generator per slot
        elif method == "adapters":
            total += n_tasks * slots * (2 * m * d + m + d + 2 * d)
        elif method == "adapters-shared-norm":
            total += n_tasks * slots * (2 * m * d + m + d) + slots * 2 * d
        else:
            raise AssertionError(method)
    if method.startswith("hyperformer"):
        total += n_tasks * E_T
    return total


def t5_backbone_formula(cfg, tied: bool) -> int:
    d, inner, dff, h, nb = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.num_heads, cfg.relative_attention_num_buckets
    ff = (3 if cfg.is_gated_act else 2) * d * dff
    enc = cfg.num_layers * (4 * d * inner + ff + 2 * d) + nb * h + d
    dec = cfg.num_decoder_layers * (8 * d * inner + ff + 3 * d) + nb * h + d
    emb = cfg.vocab_size * d * (1 if tied else 2)  # v1.1 / flan-t5 / mT5 checkpoints have their own LM head
    return emb + enc + dec


def meta_report(preset: str, method: str, n_tasks: int = 8, rf: int = 32) -> dict:
    """The production path of `hyperscale params`: built on the meta device."""
    return build_report(preset, [f"t{i}" for i in range(n_tasks)], method=method, reduction_factor=rf)


def test_reference_numbers():
    small = meta_report("t5-small", "hyperformer++")
    base = meta_report("t5-base", "hyperformer++")
    assert small["trainable"] == 2_415_776
    assert base["trainable"] == 5_211_056
    assert base["backbone"] == 222_903_552
    assert round(base["percent_per_task"], 2) == 0.29
    assert base["groups"]["T5 layer norms"] == 47_616 and small["groups"]["T5 layer norms"] == 16_384
    # the adapter part alone, as the reference README splits it
    assert small["trainable"] - small["groups"]["T5 layer norms"] == 2_399_392
    assert base["trainable"] - base["groups"]["T5 layer norms"] == 5_163_440


@pytest.mark.parametrize("preset", ["t5-small", "t5-base", "t5-v1_1-small", "mt5-small"])
@pytest.mark.parametrize("method", ["hyperformer++", "hyperformer", "adapters", "adapters-shared-norm", "finetune"])
def test_counts_match_formula(preset, method):
    cfg = preset_config(preset)
    report = meta_report(preset, method, n_tasks=8, rf=32)
    backbone = t5_backbone_formula(cfg, tied=preset in ("t5-small", "t5-base"))
    assert report["backbone"] == backbone
    if method == "finetune":
        assert report["trainable"] == backbone
        assert report["groups"] == {"T5 (all weights)": backbone}
    else:
        want = adapter_formula(method, cfg.d_model, cfg.num_layers, cfg.num_decoder_layers, 8, 32)
        assert report["trainable"] == want
        assert sum(report["groups"].values()) == want
        assert report["total"] == backbone + want - layer_norm_count(cfg.d_model, cfg.num_layers, cfg.num_decoder_layers)
    assert report["percent_per_task"] == pytest.approx(100 * report["trainable"] / 8 / backbone)


@pytest.mark.parametrize("preset,total", [("t5-small", 60_506_624), ("t5-base", 222_903_552),
                                          ("t5-v1_1-small", 76_961_152), ("flan-t5-base", 247_577_856),
                                          ("mt5-small", 300_176_768)])
def test_backbone_sizes_match_public_checkpoints(preset, total):
    assert meta_report(preset, "adapters", n_tasks=1)["backbone"] == total


def test_preset_backbones_untie_the_v1_1_head():
    from hyperscale.modeling import load_backbone

    v10, _ = load_backbone("preset:t5-tiny")
    v11, _ = load_backbone("preset:t5-v1_1-tiny")
    assert v10.lm_head.weight is v10.shared.weight
    assert v11.lm_head.weight is not v11.shared.weight
    assert not torch.equal(v11.lm_head.weight, v11.shared.weight)
    assert v11.config.tie_word_embeddings is False


@pytest.mark.parametrize("method", ALL_METHODS)
def test_trainable_and_frozen_sets(method):
    model = build(method, perturb=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    backbone_names = {"backbone." + n for n, _ in model.backbone.named_parameters()}
    layer_norms = {n for n in backbone_names if n.endswith("layer_norm.weight")}  # layer_norm and final_layer_norm
    assert len(layer_norms) == 2 * 2 + 1 + 2 * 3 + 1
    if method == "finetune":
        assert not frozen
        assert trainable == backbone_names
        assert model.bank is None
        return
    bank = {"bank." + n for n, _ in model.bank.named_parameters()}
    assert trainable == bank | layer_norms
    assert frozen == backbone_names - layer_norms
    stacks = ("encoder", "decoder")
    if method == "hyperformer++":
        per_stack = {"layer_embeddings.weight", "position_embeddings.weight", "projector.0.weight", "projector.0.bias",
                     "projector.2.weight", "projector.2.bias", "cond_norm.weight", "cond_norm.bias",
                     "generator.weight", "generator.bias"}
    elif method == "hyperformer":
        per_stack = {"projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias",
                     "cond_norm.weight", "cond_norm.bias", "gen_weight", "gen_bias"}
    else:
        per_stack = {"down_w", "down_b", "up_w", "up_b", "gamma", "beta"}
    want = {f"bank.stacks.{s}.{k}" for s in stacks for k in per_stack}
    if method.startswith("hyperformer"):
        want.add("bank.task_embeddings")
    assert bank == want
    if method == "adapters-shared-norm":
        assert model.bank.stacks["encoder"].gamma.shape == (4, 32)  # shared across tasks: no task dimension
        assert model.bank.stacks["encoder"].down_w.shape[0] == len(TASKS)
    # gradients reach exactly the trainable set
    out = model(input_ids=torch.randint(2, 64, (2, 5)), labels=torch.randint(2, 64, (2, 3)), task_ids="rte")
    out.loss.backward()
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got_grad == trainable


def test_initialisation_follows_reference():
    model = build("hyperformer++", perturb=False)
    net = model.bank.stacks["encoder"]
    assert torch.count_nonzero(net.generator.bias) == 0 and torch.count_nonzero(net.projector[0].bias) == 0
    assert 0.005 < net.generator.weight.std().item() < 0.015
    assert 0.7 < model.bank.task_embeddings.std().item() < 1.3  # N(0, 1)
    static = build("adapters", perturb=False).bank.stacks["encoder"]
    assert 0.005 < static.down_w.std().item() < 0.015
    assert torch.all(static.gamma == 1) and torch.all(static.beta == 0) and torch.all(static.up_b == 0)
