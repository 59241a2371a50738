"""distributed.check_task_sync: the ranks' slices must put together the step's global batch."""
from types import SimpleNamespace

import pytest

from hyperscale.data.sampler import MultiTaskSampler
from hyperscale.training import distributed as hdist
from hyperscale.training.state import TrainState
from hyperscale.training.task_sync import check_task_sync


def _recipe(mode: str) -> SimpleNamespace:
    """What the trainer hands the check on rank 0 of 2: its sampler and step."""
    sampler = MultiTaskSampler({"rte": 50, "cb": 40}, global_batch_size=8, seed=3, mode=mode)
    return SimpleNamespace(sampler=sampler, state=TrainState(), world=2, rank=0)


def _check(r: SimpleNamespace, examples: list) -> None:
    check_task_sync(r.sampler, r.state.step, examples, r.world, r.rank)


def _fake_gather(monkeypatch, slices):
    monkeypatch.setattr(hdist, "all_gather_object", lambda obj: list(slices))


@pytest.mark.parametrize("mode", ["same-task", "mixed"])
def test_consistent_ranks_pass(monkeypatch, mode):
    r = _recipe(mode)
    for _ in range(3):  # a few steps in: the check compares against the step just drawn
        slices = [r.sampler.rank_batch(None, rank, 2) for rank in range(2)]
        mine = r.sampler.next_rank_batch(0, 2)
        assert mine == slices[0]
        _fake_gather(monkeypatch, slices)
        _check(r, mine)
        r.state.step += 1


def test_a_rank_with_another_seed_fails_loudly(monkeypatch):
    r = _recipe("same-task")
    other = MultiTaskSampler({"rte": 50, "cb": 40}, global_batch_size=8, seed=4, mode="same-task")
    # find a step where the two seeds disagree
    for _ in range(20):
        mine, theirs = r.sampler.next_rank_batch(0, 2), other.next_rank_batch(1, 2)
        if theirs != r.sampler.rank_batch(r.state.step, 1, 2):
            break
        r.state.step += 1
    _fake_gather(monkeypatch, [mine, theirs])
    with pytest.raises(RuntimeError, match=r"task sync check failed at step \d+ on rank 0: ranks \[1\]"):
        _check(r, mine)
