"""Extending a run (a larger ``train.max_steps`` on resume) keeps the learning rate continuous: the linear
decay goes on from where the checkpoint was and reaches its minimum at the new end, on DeepSpeed's own
WarmupDecayLR (no launch: the scheduler on a one-parameter optimizer)."""
from __future__ import annotations

import pytest
import torch
from deepspeed.runtime.lr_schedules import WarmupDecayLR

from hyperscale.training import engine as eng


class _Engine:
    def __init__(self, total: int, warmup: int = 2, peak: float = 3e-3):
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        self.lr_scheduler = WarmupDecayLR(self.optimizer, total_num_steps=total, warmup_max_lr=peak,
                                          warmup_num_steps=warmup, warmup_type="linear")

    def run(self, steps: int) -> list[float]:
        lrs = []
        for _ in range(steps):
            self.optimizer.step()
            self.lr_scheduler.step()
            lrs.append(self.optimizer.param_groups[0]["lr"])
        return lrs


def _resume(saved: dict, iteration: int, total: int, base_lr: float = 3e-3) -> _Engine:
    e = _Engine(total, peak=base_lr)  # the new run's engine, built from the new config
    e.lr_scheduler.load_state_dict({"last_batch_iteration": iteration})  # what load_checkpoint restores
    e.optimizer.param_groups[0]["lr"] = e.lr_scheduler.get_lr()[0]
    return e


def test_extension_continues_the_decay_and_reaches_zero_at_the_new_end():
    first = _Engine(12)
    lrs = first.run(12)
    saved = eng.schedule_state(first, 3e-3)
    assert saved == {"base_lr": 3e-3, "peak_lr": 3e-3, "min_lr": 0.0, "warmup_steps": 2, "total_steps": 12}
    it = first.lr_scheduler.last_batch_iteration
    e = _resume(saved, it, total=20)
    note = eng.continue_schedule(e, saved, 3e-3)
    assert note and "12 -> 20" in note
    more = e.run(9)  # iterations 12..20
    step = lrs[-1] - lrs[-2]  # the old decrement per step
    assert more[0] < lrs[-1] and more[0] > lrs[-1] + step  # no jump up, a gentler slope
    diffs = [b - a for a, b in zip([lrs[-1]] + more, more)]
    assert diffs == pytest.approx([diffs[0]] * len(diffs), rel=1e-9)  # linear
    assert more[-1] == pytest.approx(0.0, abs=1e-12)  # the minimum at the new total (iteration 20), as the first
    assert first.run(1)[0] == pytest.approx(0.0, abs=1e-12)  # run reached it at its total (iteration 12)

    # a second extension compounds: continuous again
    saved2 = eng.schedule_state(e, 3e-3)
    e2 = _resume(saved2, e.lr_scheduler.last_batch_iteration - 2, total=30)  # resumed 2 steps before the end
    e2.optimizer.param_groups[0]["lr"] = more[-3]
    assert eng.continue_schedule(e2, saved2, 3e-3)
    nxt = e2.run(1)[0]
    assert more[-3] > nxt > more[-2]


def test_without_continuation_the_rate_would_jump():
    """The control: DeepSpeed alone recomputes the decay over the new total, so the rate jumps up."""
    first = _Engine(12)
    lrs = first.run(12)
    e = _resume(eng.schedule_state(first, 3e-3), first.lr_scheduler.last_batch_iteration, total=20)
    assert e.run(1)[0] > 4 * lrs[-1]  # 1.3e-3 after 3e-4


@pytest.mark.parametrize("change", ["same-total", "in-warmup", "new-lr"])
def test_cases_left_alone(change: str):
    first = _Engine(12)
    first.run(1 if change == "in-warmup" else 8)
    saved = eng.schedule_state(first, 3e-3)
    total = 12 if change == "same-total" else 20
    e = _resume(saved, first.lr_scheduler.last_batch_iteration, total, base_lr=1e-3 if change == "new-lr" else 3e-3)
    assert eng.continue_schedule(e, saved, 1e-3 if change == "new-lr" else 3e-3) is None
    assert e.lr_scheduler.max_lrs == [1e-3 if change == "new-lr" else 3e-3]
