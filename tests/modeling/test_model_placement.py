"""Where adapters sit: SelfAttention and DenseReluDense outputs of every block, never cross-attention."""
from __future__ import annotations

import pytest
import torch

from modeling_helpers import ADAPTER_METHODS, D_MODEL, RF, batch, build, clone_backbone, gen_rows, make_identity


def _outputs(model, bare, b, task_ids):
    out = model(**b, task_ids=task_ids)
    ref = bare(**b)
    return out, ref


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_identity_adapter_leaves_outputs_unchanged_and_perturbed_changes_them(method, version):
    model = build(method, version)
    bare = clone_backbone(model.backbone)
    make_identity(model)
    b = batch()
    mixed = ["rte", "sst2", "cola", "rte"]
    with torch.no_grad():
        for task_ids in ("sst2", mixed):
            out, ref = _outputs(model, bare, b, task_ids)
            torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
        # a perturbed adapter changes the outputs
        if method in ("adapters", "adapters-shared-norm"):
            model.bank.stacks["encoder"].beta.add_(0.5)
        else:
            rows = gen_rows(D_MODEL, D_MODEL // RF)
            net = model.bank.stacks["encoder"]
            if method == "hyperformer++":
                net.generator.bias[rows["beta"]] = 0.5
            else:
                net.gen_bias[:, rows["beta"]] = 0.5
        out, ref = _outputs(model, bare, b, "sst2")
        assert (out.logits - ref.logits).abs().max() > 1e-2


def test_hooks_sit_on_self_attention_and_feed_forward_of_every_block_only():
    model = build("hyperformer++")
    hooked = sorted(n for n, m in model.backbone.named_modules() if m._forward_hooks)
    expected = []
    for stack, ff_layer in (("encoder", 1), ("decoder", 2)):
        for i in range(2):
            expected += [f"{stack}.block.{i}.layer.0.SelfAttention", f"{stack}.block.{i}.layer.{ff_layer}.DenseReluDense"]
    assert hooked == sorted(expected)
    assert not any("EncDecAttention" in n for n in hooked)
    # the hooked modules are what the names say: the attention of a self-attention layer, the MLP of a FF layer
    for name in hooked:
        parent = type(model.backbone.get_submodule(name.rsplit(".", 1)[0])).__name__
        kind = type(model.backbone.get_submodule(name)).__name__
        if name.endswith("SelfAttention"):
            assert (parent, kind) == ("T5LayerSelfAttention", "T5Attention")
        else:
            assert parent == "T5LayerFF" and kind.startswith("T5Dense"), (parent, kind)
    # and every hooked module carries exactly one hook
    assert all(len(model.backbone.get_submodule(n)._forward_hooks) == 1 for n in hooked)


def _adapter(y, w, slot):
    """A(y) = LN_{gamma,beta}(up(gelu_new(down(y)))) + y, written out without the library's helper."""
    z = y @ w.down_w[0, slot].T + w.down_b[0, slot]
    z = 0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z**3)))  # gelu_new
    z = z @ w.up_w[0, slot].T + w.up_b[0, slot]
    mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
    return (z - mu) / torch.sqrt(var + 1e-5) * w.gamma[0, slot] + w.beta[0, slot] + y


@pytest.mark.parametrize("method", ["hyperformer++", "adapters"])
@torch.no_grad()
def test_manual_recomputation_of_every_block(method):
    """Recompute every sublayer from its captured input: h + A(SelfAttn(norm h)), h + CrossAttn(..),
    h + A(DenseReluDense(norm h)) with the slot order (ff, self_attn) per layer."""
    model = build(method)
    bb = model.backbone
    captured: dict[str, tuple] = {}
    handles = []

    def grab_in(name):
        def pre(mod, args, kwargs):
            captured[name + ":in"] = (args, dict(kwargs))
        return pre

    def grab_out(name):
        def post(mod, args, output):
            captured[name + ":out"] = output
        return post

    for stack in ("encoder", "decoder"):
        for i, block in enumerate(getattr(bb, stack).block):
            for j, layer in enumerate(block.layer):
                name = f"{stack}.{i}.{j}"
                handles.append(layer.register_forward_pre_hook(grab_in(name), with_kwargs=True))
                handles.append(layer.register_forward_hook(grab_out(name)))
                inner = getattr(layer, "SelfAttention", None) or getattr(layer, "EncDecAttention", None)
                if inner is not None:
                    handles.append(inner.register_forward_pre_hook(grab_in(name + ".attn"), with_kwargs=True))
    b = batch()
    model(**b, task_ids="sst2", use_cache=False)
    for h in handles:
        h.remove()
    weights = model.bank(torch.tensor([model.task_index("sst2")]))
    n_checked = 0
    for stack in ("encoder", "decoder"):
        w = weights[stack]
        for i, block in enumerate(getattr(bb, stack).block):
            for j, layer in enumerate(block.layer):
                name = f"{stack}.{i}.{j}"
                (h, *_), kw = captured[name + ":in"]
                if "hidden_states" in kw:
                    h = kw["hidden_states"]
                out = captured[name + ":out"]
                out = out[0] if isinstance(out, tuple) else out
                if j == 0:  # self-attention: adapter slot 2*i + 1
                    a_args, a_kw = captured[name + ".attn:in"]
                    y = layer.SelfAttention.forward(*a_args, **a_kw)[0]  # .forward: bypasses the hooks
                    torch.testing.assert_close(a_args[0] if a_args else a_kw["hidden_states"], layer.layer_norm(h))
                    expected = h + _adapter(y, w, 2 * i + 1)
                elif stack == "decoder" and j == 1:  # cross-attention: no adapter
                    a_args, a_kw = captured[name + ".attn:in"]
                    y = layer.EncDecAttention.forward(*a_args, **a_kw)[0]
                    expected = h + y
                else:  # feed-forward: adapter slot 2*i
                    y = layer.DenseReluDense.forward(layer.layer_norm(h))
                    expected = h + _adapter(y, w, 2 * i)
                torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
                n_checked += 1
    assert n_checked == 2 * 2 + 2 * 3


def test_hook_outside_context_raises():
    model = build("hyperformer++")
    b = batch()
    with pytest.raises(RuntimeError, match="outside an adapter context"):
        model.backbone(**b)
