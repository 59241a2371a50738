"""Hook injection and removal: only hyperscale's own hooks come and go; detach gives the bare backbone."""
from __future__ import annotations

import pytest
import torch

from hyperscale.modeling import HyperscaleModel
from hyperscale.modeling.inject import ATTACHED_FLAG, AdapterHooks, _in_autograd_backward, attach_adapters
from modeling_helpers import ADAPTER_METHODS, RF, TASKS, batch, build, clone_backbone, tiny_backbone

MIXED = ["sst2", "rte", "cola", "sst2"]
ATTN = "encoder.block.0.layer.0.SelfAttention"
FF = "decoder.block.1.layer.2.DenseReluDense"


class Foreign:
    """Forward hooks and pre-hooks that "other code" puts on a module; counts calls, keeps the last output."""

    def __init__(self, module: torch.nn.Module):
        self.calls = {"pre": 0, "post": 0}
        self.last = None
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self.calls["pre"] += 1

    def _post(self, module, args, output):
        self.calls["post"] += 1
        self.last = (output[0] if isinstance(output, tuple) else output).detach().clone()

    def reset(self) -> None:
        self.calls = {"pre": 0, "post": 0}
        self.last = None


def _hook_counts(backbone: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in backbone.named_modules()
            if m._forward_pre_hooks or m._forward_hooks}


def _run(model, b, task_ids="rte"):
    with torch.no_grad():
        return model(**b, task_ids=task_ids)


# ------------------------------------------------------------------------------------- foreign hooks stay
def test_detach_keeps_hooks_other_code_registered():
    # one foreign module hooked before wrapping (registered ahead of ours), one after (behind ours)
    backbone = tiny_backbone()
    before = Foreign(backbone.get_submodule(ATTN))
    model = HyperscaleModel.from_backbone(backbone, TASKS, reduction_factor=RF).eval()
    after = Foreign(model.backbone.get_submodule(FF))
    counts = _hook_counts(model.backbone)
    assert counts[ATTN] == (1, 2) and counts[FF] == (1, 2)  # theirs + ours
    assert len(model.adapter_hooks) == 8

    b = batch(4)
    _run(model, b, MIXED)
    assert before.calls == {"pre": 1, "post": 1} and after.calls == {"pre": 1, "post": 1}

    model.detach()
    assert not model.adapter_hooks.attached and not getattr(model.backbone, ATTACHED_FLAG)
    counts = _hook_counts(model.backbone)
    assert counts == {ATTN: (1, 1), FF: (1, 1)}  # only the foreign hooks are left
    model.detach()  # idempotent
    assert _hook_counts(model.backbone) == counts

    before.reset(), after.reset()
    bare = clone_backbone(model.backbone)
    with torch.no_grad():
        out = model.backbone(**b)  # no context needed any more
        ref = bare(**b)
    assert before.calls == {"pre": 1, "post": 1} and after.calls == {"pre": 1, "post": 1}
    assert torch.equal(out.logits, ref.logits)
    # the foreign forward hook behind ours now sees the bare module output
    torch.testing.assert_close(after.last, bare.get_submodule(FF)(_ff_input(bare, b)), atol=0, rtol=0)


def _ff_input(bare, b):
    """The input of decoder block 1's DenseReluDense in the bare backbone, captured with a temporary hook."""
    seen = {}

    def grab(module, args):
        seen["x"] = args[0].detach().clone()

    with bare.get_submodule(FF).register_forward_pre_hook(grab), torch.no_grad():
        bare(**b)
    return seen["x"]


@pytest.mark.parametrize("method", ["hyperformer++", "hyperformer"])
def test_materialize_keeps_hooks_other_code_registered(method):
    model = build(method)
    attn = Foreign(model.backbone.get_submodule(ATTN))
    ff = Foreign(model.backbone.get_submodule(FF))
    counts = _hook_counts(model.backbone)
    b = batch(4)
    before = _run(model, b, MIXED).logits

    mat = model.materialize().eval()
    # the original: every hook (ours and theirs) still in place, and theirs still fire
    assert _hook_counts(model.backbone) == counts
    attn.reset(), ff.reset()
    assert torch.equal(_run(model, b, MIXED).logits, before)
    assert attn.calls == {"pre": 1, "post": 1} and ff.calls == {"pre": 1, "post": 1}
    # the copy: its own hyperscale hooks (one per slot), the copied foreign ones kept, no stale hyperscale hook
    assert _hook_counts(mat.backbone) == counts
    assert all(len(mat.backbone.get_submodule(p)._forward_hooks) == (2 if p in (ATTN, FF) else 1)
               for p in mat.adapter_hooks.module_paths)
    # (deepcopy copied the foreign hooks' bound objects too, so the originals do not count the copy's calls)
    attn.reset(), ff.reset()
    torch.testing.assert_close(_run(mat, b, MIXED).logits, before, atol=1e-5, rtol=1e-5)
    assert attn.calls == {"pre": 0, "post": 0} and ff.calls == {"pre": 0, "post": 0}
    # detaching the copy leaves the original's adapters alone
    mat.detach()
    assert torch.equal(_run(model, b, MIXED).logits, before)


def test_adapter_hooks_as_context_manager_remove_only_their_own():
    backbone = tiny_backbone()
    foreign = Foreign(backbone.get_submodule(ATTN))
    with attach_adapters(backbone, 1e-5, lambda: None) as hooks:
        assert isinstance(hooks, AdapterHooks) and len(hooks) == 8 and getattr(backbone, ATTACHED_FLAG)
        assert len(backbone.get_submodule(ATTN)._forward_hooks) == 2
        # real module paths, in slot order (the feed-forward layer's "-1" resolved)
        assert hooks.module_paths[:2] == ["encoder.block.0.layer.1.DenseReluDense", ATTN] and FF in hooks.module_paths
        assert sorted(hooks.module_paths) == sorted(_hook_counts(backbone))
        with pytest.raises(ValueError, match="already carries hyperscale adapters"):
            attach_adapters(backbone, 1e-5, lambda: None)
        with pytest.raises(RuntimeError, match="outside an adapter context"), torch.no_grad():
            backbone(**batch(2))
    assert _hook_counts(backbone) == {ATTN: (1, 1)} and not getattr(backbone, ATTACHED_FLAG)
    foreign.reset()
    with torch.no_grad():
        backbone(**batch(2))
    assert foreign.calls == {"pre": 1, "post": 1}
    # after removal the backbone can be wrapped again
    HyperscaleModel.from_backbone(backbone, TASKS, reduction_factor=RF)


# --------------------------------------------------------------------------------- detach == bare backbone
@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_detach_then_forward_is_the_plain_backbone(method, version):
    model = build(method, version)  # perturbed adapters: they change the outputs while attached
    bare = clone_backbone(model.backbone)
    b = batch(4)
    with torch.no_grad():
        ref = bare(**b)
        attached = model(**b, task_ids=MIXED)
    assert (attached.logits - ref.logits).abs().max() > 1e-3

    model.detach()
    assert _hook_counts(model.backbone) == {}
    with torch.no_grad():
        for task_ids in (MIXED, "rte", None):
            out = model(**b, task_ids=task_ids)
            assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)
    gen_kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(task_ids=MIXED, **gen_kw), bare.generate(**gen_kw))
    # and the freed backbone can carry a new HyperscaleModel
    again = HyperscaleModel(model.backbone, model.config)
    assert len(again.adapter_hooks) == 8


def test_detach_of_finetune_is_a_no_op():
    model = build("finetune")
    assert not model.adapter_hooks.attached
    b = batch(2)
    before = _run(model, b).logits
    model.detach()
    assert torch.equal(_run(model, b).logits, before)


# ------------------------------------------------------------------ the one private torch API we rely on
def test_backward_detection():
    """``_in_autograd_backward`` (torch._C._current_graph_task_id) must tell backward from forward."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(("forward", _in_autograd_backward()))
            return x * 2

        @staticmethod
        def backward(ctx, g):
            seen.append(("backward", _in_autograd_backward()))
            return g * 2

    x = torch.ones(3, requires_grad=True)
    assert _in_autograd_backward() is False
    Probe.apply(x).sum().backward()
    assert seen == [("forward", False), ("backward", True)]
    assert _in_autograd_backward() is False
