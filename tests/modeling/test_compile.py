"""torch.compile: the HyperFormer++ training step traces to one graph (no graph breaks), gives the eager
loss and gradients, and compiles a bounded number of graphs across sequence lengths (issue 14).

Backends ``eager``/``aot_eager`` (Dynamo and AOTAutograd tracing, no code generation) keep this fast; the
inductor numbers are in benchmarks/NOTES.md ("torch.compile on CPU").
"""
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from hyperscale.modeling import HyperscaleModel, context
from hyperscale.modeling.compile import count_graph_breaks, mark_lengths_dynamic, pad_to_bucket, prepare_for_compile
from hyperscale.training.config import CONFIG_DIR, load_config
from hyperscale.training.engine import forward_loss, per_example_loss
from modeling_helpers import TASKS, batch, perturb_bank, tiny_backbone

pytestmark = pytest.mark.slow  # Dynamo traces of whole training steps, 5-70 s each

# the reduction factors of the shipped run configs (8 and 32; 32 gives this tiny model a bottleneck of 1)
REDUCTION_FACTORS = sorted({load_config(p).model.reduction_factor for p in CONFIG_DIR.glob("*.yaml")})
B = 4
# one id for the batch (the single-task path, T == 1) / one id per example, not every task present
TASK_IDS = {"single": lambda: torch.tensor(1), "mixed": lambda: torch.tensor([2, 0, 0, 2])}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(rf: int = 8) -> HyperscaleModel:
    model = HyperscaleModel.from_backbone(tiny_backbone(), TASKS, reduction_factor=rf).train()
    perturb_bank(model)
    return model


def _step(model: HyperscaleModel, b: dict, task_ids: torch.Tensor) -> torch.Tensor:
    return forward_loss(model, b, task_ids)[0]


def _grads(model: HyperscaleModel) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


# each reduction factor and each task-id kind once (the full cross product traced the same code twice more, ~1 min)
@pytest.mark.parametrize("rf, kind", list(zip(REDUCTION_FACTORS, sorted(TASK_IDS, reverse=True))))
def test_training_step_is_one_graph_and_matches_eager(rf, kind):
    """forward + engine.forward_loss traced with fullgraph=True (any graph break raises), backward through
    AOTAutograd's traced backward graph; loss and every gradient as in eager."""
    model, b, task_ids = _model(rf), batch(B), TASK_IDS[kind]()
    eager = _step(model, b, task_ids)
    eager.backward()
    want = _grads(model)

    counter = CompileCounterWithBackend("aot_eager")
    loss = torch.compile(_step, backend=counter, fullgraph=True)(model, b, task_ids)
    loss.backward()
    got = _grads(model)
    assert counter.frame_count == 1
    # the compiled forward left no context behind, in an instance attribute (Dynamo guards on the instance dict:
    # a class-level default first shadowed by the compiled call's write-back would recompile on step 2)
    assert "ctx" in vars(context._TRACED) and context._TRACED.ctx is None
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys() and any(n.startswith("bank.") for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointing_step_is_one_graph_and_matches_eager():
    """Activation checkpointing as the trainer enables it: after prepare_for_compile one graph, and the loss and
    gradients of eager checkpointing as transformers sets it up."""
    model, b, task_ids = _model(), batch(B), TASK_IDS["mixed"]()
    with pytest.warns(FutureWarning):  # transformers 5.2x: gradient_checkpointing_enable is a deprecated alias
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    eager = _step(model, b, task_ids)
    eager.backward()
    want = _grads(model)
    assert len(prepare_for_compile(model)) == 2 and prepare_for_compile(model) == []
    counter = CompileCounterWithBackend("aot_eager")
    loss = torch.compile(_step, backend=counter, fullgraph=True)(model, b, task_ids)
    loss.backward()
    got = _grads(model)
    assert counter.frame_count == 1
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_count_graph_breaks():
    model, b = _model(), batch(B)
    # a task name (evaluation's form; Dynamo specialises on it) and the backbone's own loss: no break
    assert count_graph_breaks(model, b, "rte") == (1, 0, [])
    # a break is found and located
    def breaking(m, b, t):
        x = b["labels"].float().sum()
        torch._dynamo.graph_break()
        return x * 2
    graphs, breaks, reasons = count_graph_breaks(model, b, None, step=breaking)
    assert (graphs, breaks) == (2, 1) and len(reasons) == 1 and "test_compile.py" in reasons[0]


def test_compiled_backbone_outside_a_context_raises():
    model, b = _model(), batch(B)
    compiled = torch.compile(model.backbone, backend="eager")
    with pytest.raises(RuntimeError, match="outside an adapter context"):
        compiled(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 decoder_input_ids=model.backbone._shift_right(b["labels"]))


def test_one_graph_across_lengths_and_task_mixes():
    """The engine.compile() pattern (the module compiled, the loss outside it) with every length the module sees
    marked dynamic: one graph for every (source, target) length and every task mix of a batch."""
    model = _model()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(model, backend=counter)
    for i, (src, tgt) in enumerate([(7, 5), (11, 5), (6, 9)]):
        b = batch(B, src, tgt, seed=i)
        inputs = mark_lengths_dynamic({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                                       "decoder_input_ids": model.backbone._shift_right(b["labels"])})
        out = compiled(**inputs, task_ids=torch.tensor([i % 3, 0, 1, 1]))
        per_example_loss(out.logits, b["labels"]).mean().backward()
    assert counter.frame_count == 1


def test_pad_to_bucket_keeps_the_loss():
    model, b = _model(), batch(B, 7, 5)
    padded = pad_to_bucket(b, 8)
    assert padded["input_ids"].shape == (B, 8) and padded["labels"].shape == (B, 8)
    assert (padded["labels"][:, 5:] == -100).all() and (padded["attention_mask"][:, 7:] == 0).all()
    assert pad_to_bucket(b, 8, max_length=7)["input_ids"].shape == (B, 7)
    task_ids = torch.tensor([2, 0, 0, 2])
    with torch.no_grad():
        torch.testing.assert_close(_step(model, padded, task_ids), _step(model, b, task_ids))
