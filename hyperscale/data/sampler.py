"""Deterministic, resumable multi-task temperature sampler.

The schedule is **global**: step ``s`` yields the whole global batch, a list of
``(task name, example index)`` of length ``global_batch_size``; rank ``r`` of
``world_size`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)``. So every run
sees the same batches whatever its world size (as long as it divides ``B``).

* **Tasks** are drawn with ``p_i ∝ N_i^(1/T)`` (``T=1``: proportional to size,
  ``T -> inf``: uniform; default ``T=10``). ``same-task`` mode draws one task
  per global batch (the paper); ``mixed`` draws one per example. The draws of
  step ``s`` come from ``numpy.random.Generator(PCG64([seed, 0, s]))``: a pure
  function of ``(seed, step)``, no RNG history.
* **Examples** of a task are read in order from an endless stream made of
  permutations: position ``p`` is element ``p mod N`` of the permutation of
  pass ``p // N``, drawn from ``PCG64([seed, 1, task index, pass])``. So within
  a pass every example is drawn exactly once (without replacement) and each
  pass is reshuffled.
* **State** is O(1) in steps: the step and, per task, how many examples were
  consumed. The batch at step ``s`` depends only on ``(seed, s, counters)``;
  :meth:`state_dict` / :meth:`load_state_dict` continue exactly where a run
  stopped without replaying anything.
* **Length grouping** (optional): each pass's permutation is cut in windows of
  ``length_window`` examples; each window is sorted by length (longest first),
  cut into chunks of one global batch, and the chunks are shuffled (seeded).
  Batches then hold examples of similar length, which cuts padding. It is still
  a permutation of the pass, so without-replacement holds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator, Mapping, Sequence

import numpy as np

SAME_TASK = "same-task"
MIXED = "mixed"
MODES = (SAME_TASK, MIXED)

_TASK_STREAM = 0
_PERM_STREAM = 1
_CHUNK_STREAM = 2


def temperature_probabilities(task_sizes: Mapping[str, int], temperature: float) -> np.ndarray:
    """``p_i ∝ N_i^(1/T)`` in the order of ``task_sizes`` (``T=inf``: uniform)."""
    sizes = np.asarray(list(task_sizes.values()), dtype=np.float64)
    if temperature is None or not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if math.isinf(temperature):
        return np.full(len(sizes), 1.0 / len(sizes))
    logits = np.log(sizes) / float(temperature)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


class MultiTaskSampler:
    """Global multi-task batch schedule; see the module docstring.

    Args:
        task_sizes: ordered ``{task name: number of training examples}``; the
            order fixes the task indices used by the random streams.
        global_batch_size: examples per global batch (all ranks together).
        seed: seed of all draws.
        temperature: sampling temperature ``T`` (``float("inf")`` = uniform).
        mode: ``"same-task"`` (one task per global batch) or ``"mixed"``.
        group_by_length: sort windows of each pass by length (needs ``lengths``).
        lengths: ``{task: sequence of per-example lengths}`` for grouping.
        length_window: examples per sorting window (default ``50 * global_batch_size``).
    """

    def __init__(self, task_sizes: Mapping[str, int], global_batch_size: int, seed: int = 0,
                 temperature: float = 10.0, mode: str = SAME_TASK, group_by_length: bool = False,
                 lengths: Mapping[str, Sequence[int]] | None = None,
                 length_window: int | None = None):
        if not task_sizes:
            raise ValueError("task_sizes is empty")
        for name, size in task_sizes.items():
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise ValueError(f"task {name!r} has size {size!r}; sizes must be integers >= 1")
        if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int) \
                or global_batch_size < 1:
            raise ValueError(f"global_batch_size must be an integer >= 1, got {global_batch_size!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.task_names = list(task_sizes)
        self.task_sizes = OrderedDict((name, int(task_sizes[name])) for name in self.task_names)
        self._sizes = np.array(list(self.task_sizes.values()), dtype=np.int64)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.temperature = float(temperature)
        self.mode = mode
        self.probabilities = temperature_probabilities(self.task_sizes, self.temperature)
        self._cdf = np.cumsum(self.probabilities)
        self._cdf[-1] = 1.0
        self.group_by_length = bool(group_by_length)
        self.length_window = int(length_window or 50 * self.global_batch_size)
        if self.length_window < 1:
            raise ValueError("length_window must be >= 1")
        self._lengths = None
        if self.group_by_length:
            if lengths is None:
                raise ValueError("group_by_length=True needs lengths={task: [length, ...]}")
            self._lengths = {}
            for name in self.task_names:
                if name not in lengths:
                    raise ValueError(f"lengths has no entry for task {name!r}")
                arr = np.asarray(lengths[name], dtype=np.int64)
                if arr.shape != (self.task_sizes[name],):
                    raise ValueError(f"lengths[{name!r}] has {arr.size} entries, task size is "
                                     f"{self.task_sizes[name]}")
                self._lengths[name] = arr
        self._perm_cache: OrderedDict = OrderedDict()
        self.step = 0
        self.consumed = np.zeros(len(self.task_names), dtype=np.int64)

    # ------------------------------------------------------------------ randomness
    def task_draws(self, step: int) -> np.ndarray:
        """Task index of each position of global batch ``step`` (pure)."""
        rng = np.random.Generator(np.random.PCG64([self.seed, _TASK_STREAM, int(step)]))
        if self.mode == SAME_TASK:
            u = rng.random()
            task = int(np.searchsorted(self._cdf, u, side="right"))
            return np.full(self.global_batch_size, min(task, len(self._cdf) - 1), dtype=np.int64)
        u = rng.random(self.global_batch_size)
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self._cdf) - 1)

    def pass_permutation(self, task: int, epoch: int) -> np.ndarray:
        """Order of task ``task``'s examples in pass ``epoch`` (pure, cached)."""
        key = (task, epoch)
        perm = self._perm_cache.get(key)
        if perm is not None:
            self._perm_cache.move_to_end(key)
            return perm
        n = int(self._sizes[task])
        rng = np.random.Generator(np.random.PCG64([self.seed, _PERM_STREAM, task, epoch]))
        perm = rng.permutation(n)
        if self.group_by_length:
            perm = self._group(perm, self._lengths[self.task_names[task]], task, epoch)
        perm.setflags(write=False)
        self._perm_cache[key] = perm
        while len(self._perm_cache) > 4 * len(self.task_names) + 4:
            self._perm_cache.popitem(last=False)
        return perm

    def _group(self, perm: np.ndarray, lengths: np.ndarray, task: int, epoch: int) -> np.ndarray:
        out = []
        bsz = self.global_batch_size
        for w, start in enumerate(range(0, len(perm), self.length_window)):
            window = perm[start:start + self.length_window]
            order = np.argsort(-lengths[window], kind="stable")
            window = window[order]
            chunks = [window[i:i + bsz] for i in range(0, len(window), bsz)]
            rng = np.random.Generator(np.random.PCG64([self.seed, _CHUNK_STREAM, task, epoch, w]))
            out.extend(chunks[i] for i in rng.permutation(len(chunks)))
        return np.concatenate(out) if out else perm

    def example_indices(self, task: int, start: int, count: int) -> np.ndarray:
        """Examples at stream positions ``[start, start + count)`` of task ``task``."""
        n = int(self._sizes[task])
        out = np.empty(count, dtype=np.int64)
        filled = 0
        pos = int(start)
        while filled < count:
            epoch, offset = divmod(pos, n)
            take = min(count - filled, n - offset)
            out[filled:filled + take] = self.pass_permutation(task, epoch)[offset:offset + take]
            filled += take
            pos += take
        return out

    # ------------------------------------------------------------------ schedule
    def _consumed_at(self, step: int) -> np.ndarray:
        """Counters at the start of ``step``: from the current state when it is
        not ahead of ``step``, else from step 0 (only the task draws are replayed)."""
        if step == self.step:
            return self.consumed.copy()
        if step > self.step:
            counts, first = self.consumed.copy(), self.step
        else:
            counts, first = np.zeros_like(self.consumed), 0
        k = len(self.task_names)
        for s in range(first, step):
            counts += np.bincount(self.task_draws(s), minlength=k)
        return counts

    def _batch(self, step: int, consumed: np.ndarray):
        draws = self.task_draws(step)
        k = len(self.task_names)
        per_task = np.bincount(draws, minlength=k)
        picked = {t: self.example_indices(t, int(consumed[t]), int(per_task[t]))
                  for t in range(k) if per_task[t]}
        cursor = dict.fromkeys(picked, 0)
        batch = []
        for t in draws.tolist():
            batch.append((self.task_names[t], int(picked[t][cursor[t]])))
            cursor[t] += 1
        return batch, per_task

    def global_batch(self, step: int | None = None) -> list:
        """The global batch at ``step`` (default: the next one) without changing state.

        For a step other than the current one, the counters are rebuilt by
        replaying the task draws only (cheap); use :meth:`next_batch` to run.
        """
        step = self.step if step is None else int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self._batch(step, self._consumed_at(step))[0]


    def rank_batch(self, step: int | None, rank: int, world_size: int) -> list:
        """Rank ``rank``'s contiguous slice of :meth:`global_batch` ``(step)``."""
        lo, hi = self._rank_bounds(rank, world_size)
        return self.global_batch(step)[lo:hi]

    def _rank_bounds(self, rank: int, world_size: int) -> tuple:
        if world_size < 1 or self.global_batch_size % world_size:
            raise ValueError(f"world_size {world_size} does not divide the global batch size "
                             f"{self.global_batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        per = self.global_batch_size // world_size
        return rank * per, (rank + 1) * per

    def next_batch(self) -> list:
        """Return the global batch of the current step and advance the state."""
        batch, per_task = self._batch(self.step, self.consumed)
        self.consumed = self.consumed + per_task
        self.step += 1
        return batch

    def next_rank_batch(self, rank: int, world_size: int) -> list:
        """This rank's slice of :meth:`next_batch` (every rank advances the same way)."""
        lo, hi = self._rank_bounds(rank, world_size)
        return self.next_batch()[lo:hi]

    def __iter__(self) -> Iterator[list]:
        while True:
            yield self.next_batch()

    def __next__(self) -> list:
        return self.next_batch()

    # ------------------------------------------------------------------ state
    def _config(self) -> dict:
        return {"task_sizes": dict(self.task_sizes), "global_batch_size": self.global_batch_size,
                "seed": self.seed, "temperature": self.temperature, "mode": self.mode,
                "group_by_length": self.group_by_length, "length_window": self.length_window}

    def state_dict(self) -> dict:
        """O(1) state: the step, per-task consumed counts, and the configuration."""
        return {"step": int(self.step),
                "consumed": {name: int(self.consumed[i]) for i, name in enumerate(self.task_names)},
                "config": self._config()}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state``; the configuration must match this sampler's."""
        config = dict(state.get("config", {}))
        mine = self._config()
        if config:
            config["task_sizes"] = dict(config.get("task_sizes", {}))
            diff = {k: (config.get(k), v) for k, v in mine.items()
                    if k in config and config.get(k) != v}
            if list(config.get("task_sizes", {})) != self.task_names:
                diff.setdefault("task_sizes", (config.get("task_sizes"), mine["task_sizes"]))
            if diff:
                raise ValueError("sampler state was saved with another configuration: " +
                                 "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        consumed = state["consumed"]
        if set(consumed) != set(self.task_names):
            raise ValueError(f"sampler state has tasks {sorted(consumed)}, sampler has "
                             f"{sorted(self.task_names)}")
        step = int(state["step"])
        if step < 0 or any(int(v) < 0 for v in consumed.values()):
            raise ValueError("sampler state has negative counters")
        self.step = step
        self.consumed = np.array([int(consumed[name]) for name in self.task_names], dtype=np.int64)


__all__ = ["MultiTaskSampler", "temperature_probabilities", "SAME_TASK", "MIXED", "MODES"]
