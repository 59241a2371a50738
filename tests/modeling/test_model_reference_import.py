"""Import of a (synthetic) checkpoint in the reference HyperFormer++ format.

The reference format is re-stated here from ../shared/reference/README.md, independently of
hyperscale/modeling/reference.py: key names and shapes per stack, and the semantics of every tensor
(projector on [task; layer; position], LayerNorm eps 1e-6, generators reshaped row-major, gamma/beta
generators, position row 0 = feed-forward, 1 = self-attention).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hyperscale.modeling import HyperscaleModel
from hyperscale.modeling.attach import iter_slots
from hyperscale.modeling.reference import load_reference_checkpoint, reference_to_hyperscale
from modeling_helpers import RF, batch, clone_backbone, tiny_backbone

FILE_TASKS = ["rte", "sst2", "cola"]
E = 64  # task / layer / position embedding and conditioning size
HID = 128
HN = "adapter_layers_hyper_net."
TASK_KEY = "task_embedding_controller.task_to_embeddings."
POSITION_ROW = {"ff": 0, "self_attn": 1}
REFERENCE_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference"


def reference_key_shapes(d: int, m: int, n_enc: int, n_dec: int, tasks) -> dict[str, tuple[int, ...]]:
    """The reference's hypernetwork keys and shapes (the README's key table)."""
    out: dict[str, tuple[int, ...]] = {}
    for stack, n in (("encoder", n_enc), ("decoder", n_dec)):
        p = f"{stack}.{HN}"
        out.update({
            p + "layer_id_embeddings.weight": (n, E),
            p + "adapters_block_type.weight": (2, E),
            p + "task_hypernet.task_embeding_generator.0.weight": (HID, 3 * E),
            p + "task_hypernet.task_embeding_generator.0.bias": (HID,),
            p + "task_hypernet.task_embeding_generator.2.weight": (E, HID),
            p + "task_hypernet.task_embeding_generator.2.bias": (E,),
            p + "LayerNorm.weight": (E,),
            p + "LayerNorm.bias": (E,),
            p + "up_sampler_hyper_net.weight_generator.0.weight": (d * m, E),
            p + "up_sampler_hyper_net.weight_generator.0.bias": (d * m,),
            p + "up_sampler_hyper_net.bias_generator.0.weight": (d, E),
            p + "up_sampler_hyper_net.bias_generator.0.bias": (d,),
            p + "down_sampler_hyper_net.weight_generator.0.weight": (m * d, E),
            p + "down_sampler_hyper_net.weight_generator.0.bias": (m * d,),
            p + "down_sampler_hyper_net.bias_generator.0.weight": (m, E),
            p + "down_sampler_hyper_net.bias_generator.0.bias": (m,),
            p + "post_layernorm_hypernet.weight_generator.weight": (d, E),
            p + "post_layernorm_hypernet.weight_generator.bias": (d,),
            p + "post_layernorm_hypernet.bias_generator.weight": (d, E),
            p + "post_layernorm_hypernet.bias_generator.bias": (d,),
        })
    for t in tasks:
        out[TASK_KEY + t] = (E,)
    return out


@pytest.mark.parametrize("name,d,layers", [("t5-small", 512, 6), ("t5-base", 768, 12)])
def test_key_table_matches_the_reference_readme(name, d, layers):
    table = REFERENCE_DIR / f"keys-{name}.tsv"
    if not table.is_file():
        pytest.skip(f"{table} not present")
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:] if line.strip()]
    documented = {k: tuple(int(x) for x in s.split("x")) for k, s in rows}
    tasks = ["rte", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "cola"]
    assert reference_key_shapes(d, d // 32, layers, layers, tasks) == documented


def make_reference_state_dict(backbone, tasks=FILE_TASKS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random hypernetwork tensors with the reference names/shapes + the backbone's T5 weights."""
    cfg = backbone.config
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    for k in sd:  # the reference trains the T5 layer norms
        if k.endswith("layer_norm.weight"):
            sd[k] = sd[k] + 0.1 * torch.randn(sd[k].shape, generator=g)
    for k, shape in reference_key_shapes(cfg.d_model, cfg.d_model // RF, cfg.num_layers, cfg.num_decoder_layers,
                                         tasks).items():
        scale = 1.0 if ("embeddings" in k or "block_type" in k or TASK_KEY in k) else 0.2
        t = torch.randn(shape, generator=g) * scale
        if k.endswith("LayerNorm.weight"):
            t = 1.0 + 0.1 * t
        sd[k] = t
    return sd


def reference_slot_weights(sd, stack: str, task: str, layer: int, position: str, d: int, m: int):
    """One slot's adapter, computed the way the reference does."""
    p = f"{stack}.{HN}"
    x = torch.cat([sd[TASK_KEY + task], sd[p + "layer_id_embeddings.weight"][layer],
                   sd[p + "adapters_block_type.weight"][POSITION_ROW[position]]])
    h = F.relu(F.linear(x, sd[p + "task_hypernet.task_embeding_generator.0.weight"],
                        sd[p + "task_hypernet.task_embeding_generator.0.bias"]))
    c = F.linear(h, sd[p + "task_hypernet.task_embeding_generator.2.weight"],
                 sd[p + "task_hypernet.task_embeding_generator.2.bias"])
    cond = F.layer_norm(c, (E,), sd[p + "LayerNorm.weight"], sd[p + "LayerNorm.bias"], eps=1e-6)

    def gen(name):
        return F.linear(cond, sd[p + name + ".weight"], sd[p + name + ".bias"])

    return {
        "down_w": gen("down_sampler_hyper_net.weight_generator.0").view(m, d),
        "down_b": gen("down_sampler_hyper_net.bias_generator.0"),
        "up_w": gen("up_sampler_hyper_net.weight_generator.0").view(d, m),
        "up_b": gen("up_sampler_hyper_net.bias_generator.0"),
        "gamma": gen("post_layernorm_hypernet.weight_generator"),
        "beta": gen("post_layernorm_hypernet.bias_generator"),
    }


def reference_adapter(y, w):
    z = F.linear(y, w["down_w"], w["down_b"])
    z = F.gelu(z, approximate="tanh")
    z = F.linear(z, w["up_w"], w["up_b"])
    return F.layer_norm(z, (z.shape[-1],), w["gamma"], w["beta"]) + y


def _model(tasks=("cola", "rte", "sst2"), seed=0, **kw):
    return HyperscaleModel.from_backbone(tiny_backbone(seed=seed), list(tasks), method="hyperformer++",
                                         reduction_factor=RF, **kw).eval()


def test_generated_adapters_equal_the_reference_computation():
    model = _model()  # task order differs from the file's
    sd = make_reference_state_dict(model.backbone)
    summary = load_reference_checkpoint(model, sd)
    assert summary["tasks"] == ["cola", "rte", "sst2"] and summary["backbone"] == "check"
    d, m = model.d_model, model.bottleneck
    n_slots = 0
    with torch.no_grad():
        for task in FILE_TASKS:
            gen = model.bank(torch.tensor([model.task_index(task)]))
            for slot, _ in iter_slots(model.backbone):
                ref = reference_slot_weights(sd, slot.stack, task, slot.layer, slot.position, d, m)
                ours = gen[slot.stack]
                for name in ("down_w", "down_b", "up_w", "up_b", "gamma", "beta"):
                    torch.testing.assert_close(getattr(ours, name)[0, slot.index], ref[name], atol=1e-5, rtol=1e-5,
                                               msg=lambda s: f"{task} {slot} {name}: {s}")
                n_slots += 1
    assert n_slots == 3 * 8
    # the trained T5 layer norms came from the file
    assert torch.equal(model.backbone.encoder.final_layer_norm.weight, sd["encoder.final_layer_norm.weight"])


def test_imported_model_equals_a_hand_built_reference_forward():
    model = _model()
    sd = make_reference_state_dict(model.backbone)
    load_reference_checkpoint(model, sd)
    d, m = model.d_model, model.bottleneck
    bare = clone_backbone(model.backbone)
    bare.load_state_dict({k: v for k, v in sd.items() if HN not in k and TASK_KEY not in k})
    active = {"task": None}

    def hook_for(stack, layer, position):
        def hook(mod, args, out):
            w = reference_slot_weights(sd, stack, active["task"], layer, position, d, m)
            if isinstance(out, tuple):
                return (reference_adapter(out[0], w),) + out[1:]
            return reference_adapter(out, w)
        return hook

    for stack, ff in (("encoder", 1), ("decoder", 2)):
        for i in range(2):
            bare.get_submodule(f"{stack}.block.{i}.layer.0.SelfAttention").register_forward_hook(
                hook_for(stack, i, "self_attn"))
            bare.get_submodule(f"{stack}.block.{i}.layer.{ff}.DenseReluDense").register_forward_hook(
                hook_for(stack, i, "ff"))
    b = batch(4)
    mixed = ["sst2", "cola", "rte", "sst2"]
    with torch.no_grad():
        ours = model(**b, task_ids=mixed).logits
        for task in FILE_TASKS:
            active["task"] = task
            ref = bare(**b).logits
            rows = [i for i, t in enumerate(mixed) if t == task]
            torch.testing.assert_close(ours[rows], ref[rows], atol=1e-5, rtol=1e-5)


def test_reference_to_hyperscale_names():
    bb = tiny_backbone()
    sd = make_reference_state_dict(bb)
    mapped = reference_to_hyperscale(sd)
    model = _model(tasks=FILE_TASKS)
    own = dict(model.named_parameters())
    bank_keys = {k for k in mapped if k.startswith("bank.")}
    assert bank_keys == {"bank." + n for n, _ in model.bank.named_parameters()}
    assert all(mapped[k].shape == own[k].shape for k in bank_keys)
    assert set(mapped) - bank_keys == {"backbone." + k for k in bb.state_dict()}
    assert torch.equal(mapped["bank.task_embeddings"][1], sd[TASK_KEY + "sst2"])  # the file's order by default
    picked = reference_to_hyperscale(sd, tasks=["cola", "rte"])
    assert torch.equal(picked["bank.task_embeddings"], torch.stack([sd[TASK_KEY + "cola"], sd[TASK_KEY + "rte"]]))
    with pytest.raises(ValueError, match=r"tasks \['mnli'\] are not in the reference checkpoint; its tasks: "
                                         r"\['rte', 'sst2', 'cola'\]"):
        reference_to_hyperscale(sd, tasks=["rte", "mnli"])
    with pytest.raises(ValueError, match="no `task_embedding_controller"):
        reference_to_hyperscale(bb.state_dict())


def test_load_from_a_file_with_legacy_key_and_without_tied_aliases(tmp_path):
    model = _model()
    sd = make_reference_state_dict(model.backbone)
    # older transformers saved a cross-attention relative bias that upstream T5 never used
    sd["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.randn(8, 4)
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        sd.pop(alias, None)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    for source in (tmp_path, tmp_path / "pytorch_model.bin"):
        summary = load_reference_checkpoint(model, source)
        assert summary["source"] == str(tmp_path / "pytorch_model.bin")


def test_frozen_weights_must_match_or_be_loaded():
    model = _model()
    old_hash = model.config.backbone_hash
    sd = make_reference_state_dict(model.backbone)
    sd["encoder.block.1.layer.0.SelfAttention.q.weight"] = sd["encoder.block.1.layer.0.SelfAttention.q.weight"] + 1
    with pytest.raises(ValueError, match=r"1 frozen T5 weight\(s\) .* differ from the model's backbone: "
                                         r"encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight.*backbone='load'"):
        load_reference_checkpoint(model, sd)
    load_reference_checkpoint(model, sd, backbone="load")
    assert torch.equal(model.backbone.encoder.block[1].layer[0].SelfAttention.q.weight,
                       sd["encoder.block.1.layer.0.SelfAttention.q.weight"])
    assert model.config.backbone_hash != old_hash and len(model.config.backbone_hash) == 64
    with pytest.raises(ValueError, match="'check' or 'load'"):
        load_reference_checkpoint(model, sd, backbone="ignore")


def test_missing_unexpected_and_shape_errors():
    model = _model()
    good = make_reference_state_dict(model.backbone)

    sd = dict(good)
    del sd["decoder.adapter_layers_hyper_net.LayerNorm.bias"]
    with pytest.raises(ValueError, match=r"lacks 1 hypernetwork key\(s\): decoder\.adapter_layers_hyper_net\.LayerNorm\.bias"):
        load_reference_checkpoint(model, sd)

    sd = dict(good)
    del sd["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
    with pytest.raises(ValueError, match=r"missing 1 key\(s\) \[decoder\.block\.1\.layer\.2\.DenseReluDense\.wo\.weight\]"):
        load_reference_checkpoint(model, sd)

    sd = dict(good)
    sd["encoder.block.0.layer.0.adapter.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\) \[encoder\.block\.0\.layer\.0\.adapter\.weight\]"):
        load_reference_checkpoint(model, sd)

    sd = dict(good)
    sd["encoder.adapter_layers_hyper_net.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected hypernetwork key.*extra.weight"):
        load_reference_checkpoint(model, sd)

    wider = HyperscaleModel.from_backbone(tiny_backbone(), ["rte", "sst2", "cola"], reduction_factor=RF // 2)
    with pytest.raises(ValueError, match=r"shape mismatch.*bank\.stacks\.encoder\.generator\.weight"):
        load_reference_checkpoint(wider, good)

    sd = dict(good)
    sd["decoder.adapter_layers_hyper_net.up_sampler_hyper_net.bias_generator.0.weight"] = torch.zeros(5, E)
    with pytest.raises(ValueError, match="inconsistent sizes"):
        load_reference_checkpoint(model, sd)


def test_task_name_errors_list_both_sets():
    good = make_reference_state_dict(tiny_backbone())
    model = _model(tasks=["rte", "mnli"])
    with pytest.raises(ValueError, match=r"model tasks \['rte', 'mnli'\], checkpoint tasks \['rte', 'sst2', 'cola'\]"
                                         r"; not in the checkpoint: \['mnli'\]"):
        load_reference_checkpoint(model, good)
    subset = _model(tasks=["sst2", "rte"])
    with pytest.raises(ValueError, match=r"not in the model: \['cola'\].*allow_extra_tasks=True"):
        load_reference_checkpoint(subset, good)
    load_reference_checkpoint(subset, good, allow_extra_tasks=True)
    assert torch.equal(subset.bank.task_embeddings[0], good[TASK_KEY + "sst2"])


def test_only_hyperformer_pp_models():
    good = make_reference_state_dict(tiny_backbone())
    other = HyperscaleModel.from_backbone(tiny_backbone(), FILE_TASKS, method="hyperformer", reduction_factor=RF)
    with pytest.raises(ValueError, match="method='hyperformer\\+\\+'"):
        load_reference_checkpoint(other, good)
