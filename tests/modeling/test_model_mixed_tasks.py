"""A mixed-task batch equals its per-task sub-batches: forward, backward and generate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling_helpers import ADAPTER_METHODS, batch, build

MIXED = ["rte", "sst2", "rte", "cola", "sst2", "rte"]
ATOL = 1e-5


def _tol(ref: torch.Tensor) -> float:
    """1e-5, relative to the logits' scale: an untied v1.1 head has no d_model**-0.5 rescale, its logits
    are ~20x larger than v1.0's and fp32 rounding differences between the batched-matmul (mixed) and
    F.linear (single-task) paths grow with them."""
    return ATOL * max(1.0, ref.abs().max().item())


def _groups(task_ids):
    out: dict[str, list[int]] = {}
    for i, t in enumerate(task_ids):
        out.setdefault(t, []).append(i)
    return out


def _sub(b, idx):
    return {k: v[idx] for k, v in b.items()}


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_forward_mixed_equals_sub_batches(method, version):
    model = build(method, version)
    b = batch(len(MIXED))
    n_tokens = (b["labels"] != -100).sum()
    with torch.no_grad():
        mixed = model(**b, task_ids=MIXED)
        weighted = torch.zeros(())
        for task, idx in _groups(MIXED).items():
            sub = model(**_sub(b, idx), task_ids=task)
            torch.testing.assert_close(mixed.logits[idx], sub.logits, atol=_tol(sub.logits), rtol=ATOL)
            weighted = weighted + sub.loss * (b["labels"][idx] != -100).sum() / n_tokens
        torch.testing.assert_close(mixed.loss, weighted, atol=ATOL, rtol=ATOL)
        # ints, a tensor and names pick the same weights
        as_ints = model(**b, task_ids=[model.task_index(t) for t in MIXED])
        as_tensor = model(**b, task_ids=torch.tensor([model.task_index(t) for t in MIXED]))
        torch.testing.assert_close(as_ints.logits, mixed.logits, atol=0, rtol=0)
        torch.testing.assert_close(as_tensor.logits, mixed.logits, atol=0, rtol=0)
        # the test is meaningful: tasks do produce different outputs
        one = _sub(b, [0])
        assert (model(**one, task_ids="rte").logits - model(**one, task_ids="sst2").logits).abs().max() > 1e-3


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_backward_mixed_equals_weighted_sub_batches(method):
    model = build(method)
    b = batch(len(MIXED))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    model.zero_grad()
    model(**b, task_ids=MIXED).loss.backward()
    mixed = {n: p.grad.clone() for n, p in params.items()}

    # mean over all label tokens of the mixed batch == sum over tasks of (tokens_t / tokens) * mean_t
    model.zero_grad()
    n_tokens = (b["labels"] != -100).sum()
    for task, idx in _groups(MIXED).items():
        sub = _sub(b, idx)
        loss = model(**sub, task_ids=task).loss
        (loss * (sub["labels"] != -100).sum() / n_tokens).backward()
    for n, p in params.items():
        torch.testing.assert_close(mixed[n], p.grad, atol=ATOL, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    # gradients flow to every task's adapters (hypernetworks: to every used task embedding)
    if method.startswith("hyperformer"):
        assert torch.all(params["bank.task_embeddings"].grad.abs().sum(-1) > 0)
    else:
        assert torch.all(params["bank.stacks.encoder.down_w"].grad.flatten(1).abs().sum(-1) > 0)


def _pad(seqs: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(seqs, (0, length - seqs.shape[1]), value=0)


@pytest.mark.parametrize("num_beams", [1, 2])
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_generate_mixed_equals_sub_batches(method, num_beams):
    model = build(method, init_factor=2.0)
    b = batch(len(MIXED))
    kw = dict(max_new_tokens=6, do_sample=False, num_beams=num_beams)
    mixed = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], task_ids=MIXED, **kw)
    for task, idx in _groups(MIXED).items():
        sub = model.generate(input_ids=b["input_ids"][idx], attention_mask=b["attention_mask"][idx], task_ids=task, **kw)
        assert torch.equal(mixed[idx], _pad(sub, mixed.shape[1])), (task, mixed[idx], sub)
    # the comparison is meaningful: generations vary with the input and with the task
    assert len({tuple(r) for r in mixed.tolist()}) >= 4
    other = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], task_ids="cola", **kw)
    assert not torch.equal(_pad(other, mixed.shape[1]), _pad(mixed, other.shape[1]))
    if num_beams == 2:
        # num_return_sequences expands the batch again: rows 2i and 2i+1 belong to example i
        both = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], task_ids=MIXED,
                              num_return_sequences=2, **kw)
        assert both.shape[0] == 2 * len(MIXED)
        for task, idx in _groups(MIXED).items():
            sub = model.generate(input_ids=b["input_ids"][idx], attention_mask=b["attention_mask"][idx],
                                 task_ids=task, num_return_sequences=2, **kw)
            rows = [2 * i + r for i in idx for r in range(2)]
            assert torch.equal(both[rows], _pad(sub, both.shape[1]))


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_adapter_weights_computed_once_per_call(method):
    model = build(method)
    calls = []
    handle = model.bank.register_forward_hook(lambda mod, args, out: calls.append(args[0].tolist()))
    b = batch(len(MIXED))
    model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], task_ids=MIXED,
                   max_new_tokens=5, min_new_tokens=5, do_sample=False, num_beams=2)
    assert len(calls) == 1
    assert calls[0] == sorted({model.task_index(t) for t in MIXED})  # only the batch's distinct tasks
    calls.clear()
    model(**b, task_ids=MIXED)
    assert len(calls) == 1
    calls.clear()
    model(**b, task_ids="cola")
    assert calls == [[model.task_index("cola")]]
    handle.remove()


@pytest.mark.parametrize("method", ["hyperformer++", "adapters"])
def test_gradient_checkpointing_gives_the_same_gradients(method):
    """Checkpointed blocks recompute their forward during backward, outside the adapter context."""
    model = build(method).train()
    b = batch(len(MIXED))
    model(**b, task_ids=MIXED).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    enable = getattr(model.backbone, "activation_checkpointing_enable", None) or model.backbone.gradient_checkpointing_enable
    enable()
    model(**b, task_ids=MIXED, use_cache=False).loss.backward()
    ckpt = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(plain) == set(ckpt)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=ATOL, rtol=1e-4)
