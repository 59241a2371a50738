"""Task ids and their errors, add_task, materialize."""
from __future__ import annotations

import pytest
import torch

from hyperscale.modeling import HyperscaleConfig, HyperscaleModel
from hyperscale.modeling.static import StaticAdapterBank
from modeling_helpers import ADAPTER_METHODS, TASKS, batch, build, clone_backbone, tiny_backbone

MIXED = ["sst2", "rte", "cola", "sst2"]


def _logits(model, task_ids, n=4):
    b = batch(n)
    with torch.no_grad():
        return model(**b, task_ids=task_ids).logits


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_task_id_errors_list_the_known_tasks(method):
    model = build(method, perturb=False)
    b = batch(4)
    known = "rte, sst2, cola"
    with pytest.raises(ValueError, match=f"unknown task id 'mnli'; known tasks: {known}"):
        model(**b, task_ids="mnli")
    with pytest.raises(ValueError, match="unknown task id 'mnli'.*known tasks"):
        model(**b, task_ids=["rte", "mnli", "rte", "rte"])
    for bad in (3, -1, [0, 1, 3, 0], torch.tensor([0, 1, 2, 5])):
        with pytest.raises(ValueError, match=r"known tasks: rte, sst2, cola \(names, or ints 0..2\)"):
            model(**b, task_ids=bad)
    with pytest.raises(ValueError, match="task_ids is missing.*known tasks: rte, sst2, cola"):
        model(**b)
    with pytest.raises(ValueError, match="got 3 task ids for a batch of 4 examples"):
        model(**b, task_ids=["rte", "sst2", "rte"])
    with pytest.raises(ValueError, match="got 5 task ids for a batch of 4 examples"):
        model(**b, task_ids=torch.tensor([0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="task_ids is missing"):
        model.generate(input_ids=b["input_ids"], max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown task id"):
        model.generate(input_ids=b["input_ids"], task_ids="mnli", max_new_tokens=2)
    with pytest.raises(ValueError, match="got 1 task ids"):
        model.generate(input_ids=b["input_ids"], task_ids=["rte"], max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown task id True"):
        model(**b, task_ids=True)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown method 'lora'; choose one of: hyperformer\\+\\+, hyperformer, "
                                         "adapters, adapters-shared-norm, finetune"):
        HyperscaleModel.from_backbone(tiny_backbone(), TASKS, method="lora")
    with pytest.raises(ValueError, match="tasks is empty"):
        HyperscaleModel.from_backbone(tiny_backbone(), [], method="hyperformer++")
    with pytest.raises(ValueError, match="unique"):
        HyperscaleConfig(method="adapters", tasks=["rte", "rte"])
    with pytest.raises(ValueError, match="reduction_factor"):
        HyperscaleConfig(method="adapters", tasks=["rte"], reduction_factor=0)
    with pytest.raises(ValueError, match="unknown keys"):
        HyperscaleConfig.from_dict({"method": "adapters", "tasks": ["rte"], "bogus": 1})
    with pytest.raises(ValueError, match="unknown backbone preset 'preset:t5-huge'; known presets: .*t5-base"):
        HyperscaleModel.from_backbone("preset:t5-huge", TASKS)
    with pytest.raises(TypeError, match="backbone must be"):
        HyperscaleModel.from_backbone(3, TASKS)


def test_hook_outside_context_raises_for_every_method():
    for method in ADAPTER_METHODS:
        model = build(method, perturb=False)
        with pytest.raises(RuntimeError, match="outside an adapter context"):
            model.backbone(**batch(2))
        # and after a normal call the context is gone again
        model(**batch(2), task_ids="rte")
        with pytest.raises(RuntimeError, match="outside an adapter context"):
            model.backbone.generate(input_ids=batch(2)["input_ids"], max_new_tokens=2)


def test_finetune_runs_the_plain_backbone():
    model = build("finetune")
    b = batch(2)
    with torch.no_grad():
        out = model(**b)  # no task ids needed: the task is in the input text
        assert torch.equal(out.logits, model.backbone(**b).logits)


# -------------------------------------------------------------------------------------------- add_task
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_add_task_inits(method):
    model = build(method)
    model.add_task("copy_of_rte", init="rte")
    model.add_task("copy_of_1", init=1)
    model.add_task("avg", init="mean")
    model.add_task("rnd", init="random")
    assert model.tasks == TASKS + ["copy_of_rte", "copy_of_1", "avg", "rnd"]
    assert model.config.tasks == model.tasks
    torch.testing.assert_close(_logits(model, "copy_of_rte"), _logits(model, "rte"), atol=0, rtol=0)
    torch.testing.assert_close(_logits(model, "copy_of_1"), _logits(model, "sst2"), atol=0, rtol=0)
    rnd = _logits(model, "rnd")
    for t in TASKS:
        assert (rnd - _logits(model, t)).abs().max() > 1e-4
    if method.startswith("hyperformer"):
        emb = model.bank.task_embeddings
        assert emb.shape[0] == 7 and emb.requires_grad
        torch.testing.assert_close(emb[5], emb[:5].mean(0))
        assert torch.equal(emb[3], emb[0]) and torch.equal(emb[4], emb[1])
    else:
        st = model.bank.stacks["decoder"]
        assert st.down_w.shape[0] == 7 and st.down_w.requires_grad
        torch.testing.assert_close(st.down_w[5], st.down_w[:5].mean(0))
        assert 0.005 < st.down_w[6].std().item() < 0.015  # random: the reference initialisation
        if method == "adapters":
            assert torch.all(st.gamma[6] == 1) and torch.all(st.beta[6] == 0)
        else:
            assert st.gamma.shape == (4, 32)  # the shared norm is not per task
    # mixed batches with new tasks; new tasks receive gradients
    out = model(**batch(4), task_ids=["rnd", "rte", "avg", "rnd"])
    out.loss.backward()
    assert all(p.grad is not None for p in model.bank.parameters())
    with pytest.raises(ValueError, match="already exists"):
        model.add_task("rte")
    with pytest.raises(ValueError, match="unknown task id 'nope'"):
        model.add_task("x", init="nope")


def test_add_task_round_trips(tmp_path):
    model = build("hyperformer++")
    model.add_task("new", init="random")
    model.save_pretrained(tmp_path / "s")
    loaded = HyperscaleModel.from_pretrained(tmp_path / "s", backbone=tiny_backbone()).eval()
    assert loaded.tasks == TASKS + ["new"]
    torch.testing.assert_close(_logits(loaded, "new"), _logits(model, "new"), atol=0, rtol=0)


def test_add_task_finetune():
    model = build("finetune")
    model.add_task("new")
    assert model.tasks == TASKS + ["new"]


# ----------------------------------------------------------------------------------------- materialize
@pytest.mark.parametrize("method", ["hyperformer++", "hyperformer"])
def test_materialize_matches_hypernetwork(method, tmp_path):
    model = build(method)
    before = _logits(model, MIXED)
    mat = model.materialize().eval()
    assert isinstance(mat.bank, StaticAdapterBank)
    assert mat.config.method == "adapters" and mat.config.materialized_from == method
    assert mat.tasks == model.tasks and mat.config.backbone_hash == model.config.backbone_hash
    hooked = [n for n, m in mat.backbone.named_modules() if m._forward_hooks]
    assert len(hooked) == 8 and all(len(mat.backbone.get_submodule(n)._forward_hooks) == 1 for n in hooked)
    for t in TASKS:
        torch.testing.assert_close(_logits(mat, t), _logits(model, t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(mat, MIXED), before, atol=1e-5, rtol=1e-5)
    # the original is untouched (its hooks were not duplicated or dropped)
    torch.testing.assert_close(_logits(model, MIXED), before, atol=0, rtol=0)
    assert all(len(model.backbone.get_submodule(n)._forward_hooks) == 1 for n in hooked)
    # a materialized model saves and loads as a static-adapter model
    mat.save_pretrained(tmp_path / "m")
    loaded = HyperscaleModel.from_pretrained(tmp_path / "m", backbone=clone_backbone(mat.backbone)).eval()
    torch.testing.assert_close(_logits(loaded, MIXED), before, atol=1e-5, rtol=1e-5)


def test_materialize_refuses_static_methods():
    with pytest.raises(ValueError, match="hypernetwork methods"):
        build("adapters").materialize()
