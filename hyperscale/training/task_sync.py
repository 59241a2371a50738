"""The debug check ``distributed.check_task_sync``: the slices the ranks are about to train on, put together in rank
order, must be exactly the global batch of this step that every rank derives from (seed, step)."""
from __future__ import annotations

from ..data.sampler import MultiTaskSampler
from . import distributed as hdist


def check_task_sync(sampler: MultiTaskSampler, step: int, examples: list, world: int, rank: int) -> None:
    """Gather every rank's slice of step ``step`` and compare it with the sampler's global batch; fails loudly,
    naming the ranks that disagree."""
    expected = [(str(t), int(i)) for t, i in sampler.global_batch(step)]
    mine = [(str(t), int(i)) for t, i in examples]
    slices = hdist.all_gather_object(mine)
    per_rank = len(expected) // world
    bad = [r for r, got in enumerate(slices) if got != expected[r * per_rank:(r + 1) * per_rank]]
    if bad:
        tasks = {r: sorted({t for t, _ in slices[r]}) for r in bad}
        raise RuntimeError(
            f"task sync check failed at step {step} on rank {rank}: ranks {bad} train on examples that "
            f"are not their slice of the global batch (their tasks: {tasks}); different seeds, data or "
            "sampler state across ranks?")
