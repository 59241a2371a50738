"""Multi-task temperature sampler: distribution, world sizes, resumption, passes."""

import json

import numpy as np
import pytest

from hyperscale.data import MultiTaskSampler, temperature_probabilities

SIZES = {"rte": 200, "mrpc": 2000, "sst2": 20000}


def test_temperature_probabilities():
    n = np.array([200, 2000, 20000], dtype=float)
    assert temperature_probabilities(SIZES, 1.0) == pytest.approx(n / n.sum())
    t10 = n ** 0.1
    assert temperature_probabilities(SIZES, 10.0) == pytest.approx(t10 / t10.sum())
    assert temperature_probabilities(SIZES, float("inf")) == pytest.approx([1 / 3] * 3)
    assert temperature_probabilities(SIZES, 1e9) == pytest.approx([1 / 3] * 3, abs=1e-6)
    with pytest.raises(ValueError):
        temperature_probabilities(SIZES, 0.0)


@pytest.mark.parametrize("temperature", [1.0, 10.0, 1e6])
def test_empirical_task_frequencies_same_task(temperature):
    sampler = MultiTaskSampler(SIZES, global_batch_size=4, seed=5, temperature=temperature)
    steps = 20000
    draws = np.array([sampler.task_draws(s)[0] for s in range(steps)])
    freq = np.bincount(draws, minlength=3) / steps
    expected = sampler.probabilities
    # binomial standard error <= 0.0036 at 20k steps; 5 sigma
    assert freq == pytest.approx(expected, abs=0.018)
    if temperature == 1.0:
        assert freq[2] > 0.85
    if temperature == 1e6:
        assert np.all(np.abs(freq - 1 / 3) < 0.018)


def test_empirical_task_frequencies_mixed():
    sampler = MultiTaskSampler(SIZES, global_batch_size=64, seed=9, temperature=2.0, mode="mixed")
    counts = np.zeros(3)
    for _ in range(600):
        for task, _ in sampler.next_batch():
            counts[list(SIZES).index(task)] += 1
    assert counts / counts.sum() == pytest.approx(sampler.probabilities, abs=0.01)


@pytest.mark.parametrize("mode", ["same-task", "mixed"])
def test_same_global_batches_for_world_sizes_1_2_4(mode):
    reference = MultiTaskSampler(SIZES, 8, seed=11, mode=mode)
    expected = [reference.next_batch() for _ in range(60)]
    for world in (1, 2, 4):
        ranks = [MultiTaskSampler(SIZES, 8, seed=11, mode=mode) for _ in range(world)]
        for step in range(60):
            parts = [ranks[r].next_rank_batch(r, world) for r in range(world)]
            assert all(len(p) == 8 // world for p in parts)
            assert sum(parts, []) == expected[step]
            # the pure per-rank view agrees
            assert sum((reference.rank_batch(step, r, world) for r in range(world)), []) == \
                expected[step]
    with pytest.raises(ValueError, match="does not divide"):
        reference.rank_batch(0, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        reference.rank_batch(0, 4, 4)


@pytest.mark.parametrize("mode", ["same-task", "mixed"])
@pytest.mark.parametrize("stop", [0, 1, 37, 250])
def test_exact_continuation_after_load_state_dict(mode, stop):
    sizes = {"a": 7, "b": 30, "c": 101}  # small tasks: several passes are crossed
    full = MultiTaskSampler(sizes, 6, seed=3, mode=mode, temperature=2.0)
    uninterrupted = [full.next_batch() for _ in range(stop + 80)]

    first = MultiTaskSampler(sizes, 6, seed=3, mode=mode, temperature=2.0)
    for _ in range(stop):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert set(state) == {"step", "consumed", "config"}
    assert state["step"] == stop and len(state["consumed"]) == 3  # O(1): no history

    resumed = MultiTaskSampler(sizes, 6, seed=3, mode=mode, temperature=2.0)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(80)] == uninterrupted[stop:]
    assert resumed.state_dict() == full.state_dict()


def test_load_state_dict_rejects_another_configuration():
    state = MultiTaskSampler(SIZES, 8, seed=1).state_dict()
    for kwargs in [dict(seed=2), dict(global_batch_size=16), dict(mode="mixed"),
                   dict(temperature=1.0)]:
        args = dict(task_sizes=SIZES, global_batch_size=8, seed=1)
        args.update(kwargs)
        with pytest.raises(ValueError, match="configuration"):
            MultiTaskSampler(**args).load_state_dict(state)
    with pytest.raises(ValueError):
        MultiTaskSampler({"rte": 200, "cola": 5}, 8, seed=1).load_state_dict(state)


def test_global_batch_is_pure_and_matches_the_run():
    sampler = MultiTaskSampler(SIZES, 4, seed=8, mode="mixed")
    ahead = sampler.global_batch(25)  # counters rebuilt from the task draws only
    assert sampler.global_batch() == sampler.global_batch() and sampler.step == 0
    seen = [sampler.next_batch() for _ in range(40)]
    assert seen[25] == ahead
    assert sampler.global_batch(10) == seen[10]  # a past step
    upcoming = sampler.global_batch()
    assert upcoming == sampler.global_batch(40) and sampler.step == 40
    assert next(iter(sampler)) == upcoming and sampler.step == 41
    assert next(sampler) == seen_after(41) and sampler.step == 42


def seen_after(step):
    other = MultiTaskSampler(SIZES, 4, seed=8, mode="mixed")
    for _ in range(step):
        other.next_batch()
    return other.next_batch()


def test_same_task_vs_mixed():
    same = MultiTaskSampler(SIZES, 16, seed=0, temperature=float("inf"))
    mixed = MultiTaskSampler(SIZES, 16, seed=0, temperature=float("inf"), mode="mixed")
    same_batches = [same.next_batch() for _ in range(50)]
    mixed_batches = [mixed.next_batch() for _ in range(50)]
    assert all(len({t for t, _ in b}) == 1 for b in same_batches)
    assert len({b[0][0] for b in same_batches}) == 3
    assert sum(len({t for t, _ in b}) > 1 for b in mixed_batches) >= 45
    assert all(len(b) == 16 for b in same_batches + mixed_batches)


@pytest.mark.parametrize("mode", ["same-task", "mixed"])
def test_without_replacement_within_a_pass(mode):
    sizes = {"a": 50, "b": 23}
    sampler = MultiTaskSampler(sizes, 5, seed=4, mode=mode, temperature=1.0)
    stream = {"a": [], "b": []}
    for _ in range(400):
        for task, index in sampler.next_batch():
            stream[task].append(index)
    for task, n in sizes.items():
        passes = [stream[task][i:i + n] for i in range(0, len(stream[task]) - n + 1, n)]
        assert len(passes) >= 3
        for p in passes:
            assert sorted(p) == list(range(n))  # each pass is a permutation
        assert len({tuple(p) for p in passes}) == len(passes)  # reshuffled every pass


def test_length_grouping_cuts_padding_and_keeps_passes():
    rng = np.random.default_rng(0)
    lengths = {"a": rng.integers(5, 128, 960), "b": rng.integers(5, 128, 480)}
    sizes = {"a": 960, "b": 480}

    def padding(sampler, steps=120):
        waste = 0
        for _ in range(steps):
            batch = sampler.next_batch()
            ls = [lengths[t][i] for t, i in batch]
            waste += max(ls) * len(ls) - sum(ls)
        return waste

    plain = MultiTaskSampler(sizes, 16, seed=1)
    grouped = MultiTaskSampler(sizes, 16, seed=1, group_by_length=True, lengths=lengths,
                               length_window=160)
    assert padding(grouped) < 0.3 * padding(plain)
    for task in range(2):
        perm = grouped.pass_permutation(task, 0)
        assert sorted(perm.tolist()) == list(range(list(sizes.values())[task]))
    state = grouped.state_dict()
    expected = [grouped.next_batch() for _ in range(10)]
    again = MultiTaskSampler(sizes, 16, seed=1, group_by_length=True, lengths=lengths,
                             length_window=160)
    again.load_state_dict(state)
    assert [again.next_batch() for _ in range(10)] == expected
    with pytest.raises(ValueError, match="lengths"):
        MultiTaskSampler(sizes, 16, group_by_length=True)


def test_bad_arguments():
    for kwargs in [dict(task_sizes={}, global_batch_size=4),
                   dict(task_sizes={"a": 0}, global_batch_size=4),
                   dict(task_sizes={"a": 3}, global_batch_size=0),
                   dict(task_sizes={"a": 3}, global_batch_size=4, mode="round-robin"),
                   dict(task_sizes={"a": 3}, global_batch_size=4, temperature=-1.0)]:
        with pytest.raises(ValueError):
            MultiTaskSampler(**kwargs)
