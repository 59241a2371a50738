"""Learning tests: the task conditioning is real, not just wired.

The synthetic tasks
-------------------
Inputs are random sequences of integer token ids (no tokenizer) over a tiny vocabulary: ``SEQ_LEN - 1``
filler ids drawn from ``FIRST_FILLER..VOCAB-1`` followed by EOS; in half of the sequences (drawn at random)
one filler position is replaced by the ``MARKER`` id. Two tasks conflict on exactly the same inputs:

* ``pos`` answers ``A`` when the marker occurs and ``B`` otherwise;
* ``neg`` answers the opposite (``B`` with the marker, ``A`` without).

The target is the single answer token followed by EOS. Every training batch holds the same ``BATCH // 2``
inputs twice, once per task, so the two tasks give opposite labels for identical inputs. The answer is
``marker XOR task``: the input alone carries no information about it, so a model that ignores the task id
cannot beat 50 % on the union of the tasks (its expected held-out loss on the answer is at least ln 2),
while a conditioned model can reach 100 %. Accuracy is the argmax of the first decoder position's logits
restricted to {A, B}, measured on held-out inputs drawn from seeds disjoint from the training ones (and
drawn independently per task).

The model is a tiny random T5 (v1.0 layout, 2 encoder layers, 1 decoder layer, d_model 32) built from a
``T5Config``. For the adapter methods its weights stay frozen (only the adapter bank and the T5 layer norms
train), so the adapters have to learn to detect the marker and to flip the answer per task.

How the constants were chosen
-----------------------------
Adam at ``LR = 1e-3`` with batches of 64 examples. Over backbone seeds 0-9, HyperFormer++ (default
hypernetwork sizes, ``REDUCTION_FACTOR = 4``, bottleneck 8) first reached >= 97 % held-out on both tasks
after 75-325 steps (seed 0, used here: ~150); per-task ``adapters`` after 50-125. At lr 1e-2 HyperFormer++
sat on the 50 % plateau (where it answers A/B at random) for longer and missed 500 steps on some seeds,
hence the lower rate.

Training does not run a fixed number of steps: the trajectory depends on torch's CPU kernels (on an
AVX-512 machine a fixed 500 steps gave HyperFormer++ 95.1 % and an answer NLL of 0.227 on "pos", where the
AVX2 and scalar kernels gave 100 %). Instead every ``CHECK_EVERY`` steps the model is scored on a fixed
probe drawn from the *training* distribution (seed ``PROBE_SEED``, never a held-out seed), and training
stops once it answers every probe example of both tasks correctly with an answer NLL below ``CONVERGED_NLL``,
or at ``MAX_STEPS``. The held-out thresholds (``PASS``, ``HELD_OUT_NLL``) then sit far from what a
converged model reaches. The task-blind control can never converge (its labels conflict), so it runs a fixed
``BLIND_STEPS``. Measured per kernel path and thread count (``ATEN_CPU_CAPABILITY=avx512|avx2|default``,
``LEARNING_TEST_THREADS=1|2``): see the table in this project's history (closing note of the session that
added the rule); rerun ``ATEN_CPU_CAPABILITY=... LEARNING_TEST_THREADS=... pytest -s tests/modeling/test_learning.py``
to regenerate it (it prints every report).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from transformers import T5Config, T5ForConditionalGeneration

from hyperscale.modeling import HyperscaleModel

pytestmark = pytest.mark.slow  # hundreds of optimizer steps per test

PAD, EOS, MARKER, A, B = 0, 1, 2, 3, 4
FIRST_FILLER = 5
VOCAB = 32
SEQ_LEN = 8
TASKS = ["pos", "neg"]

SEED = 0
MAX_STEPS = 2000  # the conditioned models converge after 150-450 steps on every kernel path measured
CHECK_EVERY = 25  # steps between probe checks of the stopping rule
PROBE = 256  # training-distribution inputs per task in the probe
PROBE_SEED = 7  # below TRAIN_SEED0: not a training batch, not a held-out set
CONVERGED_NLL = 0.02  # probe answer NLL (per task) below which training stops
BLIND_STEPS = 500  # the task-blind control never converges; 500 steps put most mass on {A, B} (the old fixed budget)
THREADS = int(os.environ.get("LEARNING_TEST_THREADS", "1"))  # 1 or 2: the result must not depend on it
BATCH = 64  # BATCH // 2 inputs, each under both tasks
LR = 1e-3
REDUCTION_FACTOR = 4  # d_model 32 -> bottleneck 8
HELD_OUT = 512  # inputs per task
TRAIN_SEED0 = 1_000  # training batch s uses seed TRAIN_SEED0 + s
HELD_OUT_SEED = {"pos": 99, "neg": 98}  # disjoint from the training seeds

PASS = 0.95  # conditioned models: held-out accuracy on each task
HELD_OUT_NLL = 0.2  # conditioned models: held-out answer NLL on each task
CHANCE = (0.35, 0.65)  # task-blind control: accuracy on the union


# ---------------------------------------------------------------------------------------------- data
def make_inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences (filler ids, EOS last) and whether each contains the marker (half of them, at random)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_FILLER, VOCAB, (n, SEQ_LEN), generator=g)
    has_marker = torch.rand(n, generator=g) < 0.5
    where = torch.randint(0, SEQ_LEN - 1, (n,), generator=g)
    ids[has_marker, where[has_marker]] = MARKER
    ids[:, -1] = EOS
    return ids, has_marker


def answers(has_marker: torch.Tensor, task: str) -> torch.Tensor:
    yes = has_marker if task == "pos" else ~has_marker
    return torch.where(yes, torch.tensor(A), torch.tensor(B))


def train_batch(step: int, blind: bool) -> dict:
    """The same inputs under both tasks; ``blind`` passes the id "pos" for the "neg" examples too."""
    ids, has = make_inputs(BATCH // 2, TRAIN_SEED0 + step)
    ans = torch.cat([answers(has, "pos"), answers(has, "neg")])
    x = torch.cat([ids, ids])
    return {
        "input_ids": x,
        "attention_mask": torch.ones_like(x),
        "labels": torch.stack([ans, torch.full_like(ans, EOS)], 1),
        "task_ids": ["pos"] * (BATCH // 2) + ["pos" if blind else "neg"] * (BATCH // 2),
    }


# ---------------------------------------------------------------------------------------------- model
@contextmanager
def one_thread():
    """Tiny models train fastest on one thread (``THREADS``); fixed threads also keep the float reductions
    reproducible. (Module-scoped fixtures run before conftest's per-test thread fixture, so set it here.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_t5(seed: int = SEED) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=1,
                   relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="relu",
                   tie_word_embeddings=True, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    return T5ForConditionalGeneration(cfg).eval()


def train(method: str, blind: bool = False) -> HyperscaleModel:
    """Adam steps on fresh paired batches until the probe says converged (``converged``) or ``MAX_STEPS``;
    identical for every caller except method and ``blind``."""
    with one_thread():
        model = HyperscaleModel.from_backbone(tiny_t5(), TASKS, method=method, reduction_factor=REDUCTION_FACTOR)
        torch.manual_seed(SEED)
        params = [p for p in model.parameters() if p.requires_grad]
        assert params and all(not p.requires_grad for p in model.backbone.shared.parameters())  # backbone frozen
        opt = torch.optim.Adam(params, lr=LR)
        model.train()
        for step in range(BLIND_STEPS if blind else MAX_STEPS):
            if step % CHECK_EVERY == 0 and not blind and converged(model):
                break
            loss = model(**train_batch(step, blind)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.steps_trained = step  # reported by held_out_report
        return model.eval()


def converged(model: HyperscaleModel) -> bool:
    """The stopping rule: every probe example of both tasks answered correctly, with an answer NLL below
    ``CONVERGED_NLL`` per task. The probe comes from the training distribution, never a held-out seed."""
    was_training = model.training
    model.eval()
    try:
        ids, has = make_inputs(PROBE, PROBE_SEED)
        for task in TASKS:
            logits = answer_logits(model, ids, task)[:, [A, B]]
            target = (answers(has, task) == B).long()
            if (logits.argmax(-1) != target).any() or F.cross_entropy(logits, target).item() >= CONVERGED_NLL:
                return False
        return True
    finally:
        model.train(was_training)


@torch.no_grad()
def answer_logits(model: HyperscaleModel, ids: torch.Tensor, task_id: str) -> torch.Tensor:
    """The logits of the first decoder position (the answer token)."""
    with one_thread():
        dec = torch.full((ids.shape[0], 1), PAD, dtype=torch.long)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec,
                     task_ids=task_id).logits[:, 0]


def predict(model: HyperscaleModel, ids: torch.Tensor, task_id: str) -> torch.Tensor:
    logits = answer_logits(model, ids, task_id)
    return torch.where(logits[:, A] > logits[:, B], A, B)


def accuracy(model: HyperscaleModel, task: str, query_id: str | None = None, against: str | None = None) -> float:
    """Held-out accuracy on ``task``'s inputs, queried with ``query_id`` (default: the task's own id) and
    scored against ``against``'s labels (default: the task's own)."""
    ids, has = make_inputs(HELD_OUT, HELD_OUT_SEED[task])
    pred = predict(model, ids, query_id or task)
    return (pred == answers(has, against or task)).float().mean().item()


def held_out_report(model: HyperscaleModel, query_id: str | None = None) -> dict:
    """Per-task accuracy, answer NLL (restricted to {A, B}) and probability mass on {A, B}."""
    out = {}
    for task in TASKS:
        ids, has = make_inputs(HELD_OUT, HELD_OUT_SEED[task])
        logits = answer_logits(model, ids, query_id or task)
        target = (answers(has, task) == B).long()  # 0: A, 1: B
        out[task] = {
            "acc": accuracy(model, task, query_id),
            "nll": F.cross_entropy(logits[:, [A, B]], target).item(),
            "mass_ab": logits.softmax(-1)[:, [A, B]].sum(-1).mean().item(),
        }
    out["union_acc"] = sum(out[t]["acc"] for t in TASKS) / len(TASKS)
    out["steps"] = getattr(model, "steps_trained", None)
    print(f"\n[{query_id or 'own ids'}, {out['steps']} steps, ATEN_CPU_CAPABILITY={torch.backends.cpu.get_cpu_capability()}"
          f", {THREADS} thread(s)] " + ", ".join(
        f"{t}: acc {out[t]['acc']:.3f} nll {out[t]['nll']:.3f} mass(A,B) {out[t]['mass_ab']:.3f}" for t in TASKS)
        + f"; union acc {out['union_acc']:.3f}")
    return out


@pytest.fixture(scope="module")
def hyperformer():
    return train("hyperformer++")


@pytest.fixture(scope="module")
def adapters():
    return train("adapters")


# ---------------------------------------------------------------------------------------------- tests
def test_data_conflicts_and_is_balanced():
    """The premise: identical inputs get opposite answers, and the marker occurs in about half of them."""
    ids, has = make_inputs(HELD_OUT, HELD_OUT_SEED["pos"])
    assert torch.all(answers(has, "pos") != answers(has, "neg"))
    assert 0.4 < has.float().mean().item() < 0.6
    assert torch.equal((ids == MARKER).any(1), has)
    b = train_batch(0, blind=False)
    half = BATCH // 2
    assert torch.equal(b["input_ids"][:half], b["input_ids"][half:])
    assert torch.all(b["labels"][:half, 0] != b["labels"][half:, 0])


@pytest.mark.parametrize("method", ["hyperformer", "adapters"])
def test_conditioned_model_learns_both_tasks(method, request):
    """HyperFormer++ (one shared hypernetwork) and per-task static adapters learn both conflicting tasks."""
    model = request.getfixturevalue(method)
    report = held_out_report(model)
    for task in TASKS:
        assert report[task]["acc"] >= PASS, (method, report)
        assert report[task]["nll"] < HELD_OUT_NLL, (method, report)


def test_one_task_id_for_both_stays_at_chance():
    """The same training, but every example carries the id "pos": the labels conflict, nothing can be learnt
    beyond the answer format, so the union stays at chance and the answer loss at about ln 2."""
    with one_thread():
        untrained = HyperscaleModel.from_backbone(tiny_t5(), TASKS, method="hyperformer++",
                                                  reduction_factor=REDUCTION_FACTOR).eval()
    start = held_out_report(untrained, query_id="pos")
    blind = train("hyperformer++", blind=True)
    report = held_out_report(blind, query_id="pos")
    assert CHANCE[0] <= report["union_acc"] <= CHANCE[1], report
    for task in TASKS:
        # it did train: most probability moved onto the two answers (the random T5 puts ~3 % there)
        assert report[task]["mass_ab"] > max(0.5, 10 * start[task]["mass_ab"]), (start, report)
    # but it cannot tell the tasks apart: the answer's held-out loss is no better than a coin flip's
    assert sum(report[t]["nll"] for t in TASKS) / len(TASKS) > math.log(2) - 0.1, report


def test_swapping_task_embeddings_swaps_answers(hyperformer):
    model = hyperformer
    emb = model.bank.task_embeddings
    ids = {t: make_inputs(HELD_OUT, HELD_OUT_SEED[t])[0] for t in TASKS}
    before = {(t, q): predict(model, ids[t], q) for t in TASKS for q in TASKS}
    for task in TASKS:
        assert accuracy(model, task) >= PASS
    original = emb.detach().clone()
    try:
        with torch.no_grad():
            emb[[0, 1]] = emb[[1, 0]]
        accs = {}
        for task in TASKS:
            other = TASKS[1 - TASKS.index(task)]
            # the task's own id now carries the other task's embedding: it answers the other task
            accs[task] = accuracy(model, task)
            assert accs[task] <= 1 - PASS, (task, accs[task])
            assert accuracy(model, task, against=other) >= PASS
            # and the other id answers this task
            assert accuracy(model, task, query_id=other) >= PASS
            # exactly: the embedding is the only per-task input of the hypernetwork
            for q in TASKS:
                q_other = TASKS[1 - TASKS.index(q)]
                assert torch.equal(predict(model, ids[task], q), before[(task, q_other)])
        print(f"\n[swapped embeddings] accuracy with own id: {accs}")
    finally:
        with torch.no_grad():
            emb.copy_(original)
    for t in TASKS:
        for q in TASKS:
            assert torch.equal(predict(model, ids[t], q), before[(t, q)])
