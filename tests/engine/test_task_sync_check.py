"""distributed.check_task_sync: the ranks' slices must put together the step's global batch."""
import pytest

from hyperscale.data.sampler import MultiTaskSampler
from hyperscale.training import distributed as hdist
from hyperscale.training.state import TrainState
from hyperscale.training.task_sync import check_task_sync


class _Rank0:
    """What the trainer hands the check on rank 0 of 2: its sampler and step."""

    def __init__(self, mode: str):
        self.sampler = MultiTaskSampler({"rte": 50, "cb": 40}, global_batch_size=8, seed=3, mode=mode)
        self.state, self.world, self.rank = TrainState(), 2, 0

    def _check_task_sync(self, examples: list) -> None:
        check_task_sync(self.sampler, self.state.step, examples, self.world, self.rank)


def _recipe(mode: str) -> _Rank0:
    return _Rank0(mode)


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
        r._check_task_sync(mine)
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
        r._check_task_sync(mine)
