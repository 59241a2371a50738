"""Activation checkpointing recomputes the forward during backward, outside the adapter context:
the adapters must still be applied there (same loss and same gradients as without checkpointing)."""
import torch

from hyperscale.modeling import HyperscaleModel


def _grads(checkpointing: bool):
    torch.manual_seed(0)
    model = HyperscaleModel.from_backbone("preset:t5-tiny", ["rte", "cb"], reduction_factor=8)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    model.train()
    if checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 200, (4, 9), generator=g)
    lab = torch.randint(2, 200, (4, 3), generator=g)
    out = model(ids, torch.ones_like(ids), labels=lab, task_ids=["rte", "cb", "cb", "rte"])
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_gives_same_loss_and_gradients():
    loss_a, grads_a = _grads(False)
    loss_b, grads_b = _grads(True)
    assert abs(loss_a - loss_b) < 1e-6
    assert grads_a.keys() == grads_b.keys()
    assert any(k.startswith("bank.") for k in grads_a)
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-5, atol=1e-6)
