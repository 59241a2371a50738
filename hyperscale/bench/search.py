"""``--max-batch-search``: the largest batch each DeepSpeed row fits (doubling, then bisection, within a time
budget), each try a fresh :func:`~hyperscale.bench.rows.measure`; out of memory (real, or simulated by
``--fake-mem-limit-mb``, see :mod:`hyperscale.bench.runtime`) means "does not fit"."""
from __future__ import annotations

import dataclasses
import gc
import math
import sys
import time
import traceback
from typing import Any, Callable, Optional

import torch

from .rows import _make_batch, measure
from .settings import BenchSettings

SEARCH_FIELDS = ("row", "start", "cap", "resolution", "budget_s", "status", "max_batch", "first_failing_batch",
                 "failure", "best", "tries", "elapsed_s", "predicted_max_batch", "limit_mb")


# =============================================================================================== the logic
def _try_outcome(t: dict) -> str:
    return t["status"] if t["status"] in ("ok", "oom") else "error"


def _try_estimate_s(last_ok: Optional[dict], b: int) -> float:
    """How long a try at batch ``b`` likely takes: the last fitting try's duration, its stepping part
    (``step_s``, if given) scaled by the batch ratio, the rest (building) taken as fixed; 0 before any fit."""
    if last_ok is None or not last_ok.get("seconds"):
        return 0.0
    total = float(last_ok["seconds"])
    stepping = min(total, float(last_ok.get("step_s") or total))
    return total - stepping + stepping * max(1.0, b / last_ok["batch"])


def search_max_batch(try_batch: Callable[[int], dict], start: int, cap: int, resolution: int = 1,
                     budget_s: float = math.inf, first: Optional[dict] = None,
                     clock: Callable[[], float] = time.monotonic,
                     on_try: Optional[Callable[[dict], None]] = None) -> dict:
    """The largest batch size that runs: doubling from ``start`` up to ``cap``, then bisection until the
    bracket (largest fit, smallest failure) is at most ``resolution`` wide (when nothing has fit yet, the
    bisection goes on down to batch 1).

    ``try_batch(b)`` runs one try and returns a dict with ``batch``, ``status`` ("ok", "oom" or
    "error"), ``seconds`` and whatever else it measured; ``first``, if given, is the already measured
    try at ``start``. An out-of-memory try bounds the search from above; any other error stops it
    (status "error": the device may be unusable after it). A try is not started when the time spent
    plus its estimate (:func:`_try_estimate_s`) exceeds ``budget_s``.
    Returns {status: converged | cap | budget | error, max_batch, first_failing_batch, failure, tries}.
    """
    if start < 1 or cap < start or resolution < 1:
        raise ValueError(f"bad search bounds: start {start}, cap {cap}, resolution {resolution}")
    t0 = clock()
    tries: list[dict] = []
    state: dict[str, Any] = {"lo": 0, "hi": None, "failure": None, "last_ok": None, "error": False}

    def run(b: int) -> None:
        t = first if (first is not None and b == start and not tries) else try_batch(b)
        t = dict(t, batch=b)
        tries.append(t)
        outcome = _try_outcome(t)
        if outcome == "ok":
            if b > state["lo"]:
                state["lo"] = b
            state["last_ok"] = t
        else:
            if state["hi"] is None or b < state["hi"]:
                state["hi"], state["failure"] = b, outcome
            state["error"] = state["error"] or outcome == "error"
        if on_try is not None:
            on_try(t)

    def over_budget(b: int) -> bool:
        return clock() - t0 + _try_estimate_s(state["last_ok"], b) > budget_s

    status = None
    run(start)
    while status is None and not state["error"] and state["hi"] is None:  # doubling
        if state["lo"] >= cap:
            status = "cap"
            break
        nxt = min(2 * state["lo"], cap)
        if over_budget(nxt):
            status = "budget"
            break
        run(nxt)
    # bisection; until something fits, down to batch 1 whatever the resolution
    while status is None and not state["error"] and state["hi"] - state["lo"] > (resolution if state["lo"] else 1):
        mid = (state["lo"] + state["hi"]) // 2
        if over_budget(mid):
            status = "budget"
            break
        run(mid)
    if state["error"]:
        status = "error"
    best = next((t for t in tries if t["batch"] == state["lo"] and _try_outcome(t) == "ok"), None)
    return {"status": status or "converged", "max_batch": state["lo"] or None,
            "first_failing_batch": state["hi"], "failure": state["failure"], "best": best, "tries": tries,
            "elapsed_s": clock() - t0}


def _linear_max_batch(tries: list[dict], limit_mb: Optional[float]) -> Optional[int]:
    """Extrapolate the largest batch from the peaks of the two largest fitting tries (peak = a + b x batch):
    the slope near the boundary, untouched by one-time costs of the first build (CPU RSS shows them)."""
    pts = {t["batch"]: t["peak_mem_mb"] for t in tries if t["status"] == "ok" and t.get("peak_mem_mb")}
    if limit_mb is None or len(pts) < 2:
        return None
    (b0, m0), (b1, m1) = sorted(pts.items())[-2:]
    slope = (m1 - m0) / (b1 - b0)
    if slope <= 0:
        return None
    return int(b1 + (limit_mb - m1) // slope)


# =============================================================================================== the rows' searches
def _try_summary(row: dict, seconds: float, warmup: int) -> dict:
    status = "ok" if row["status"] == "ok" else ("oom" if row.get("oom") else "error")
    step_s = None if row["ms_median"] is None else row["ms_median"] * (row["steps"] + warmup) / 1000.0
    return {"batch": row["batch"], "status": status, "ms_median": row["ms_median"],
            "tokens_per_s": row["tokens_per_s"], "peak_mem_mb": row["peak_mem_mb"], "steps": row["steps"],
            "loss_last": row["loss_last"], "seconds": seconds, "step_s": step_s,
            "error": (row["error"] or None) and row["error"][:300]}


def device_memory_mb(s: BenchSettings) -> Optional[float]:
    """The limit the search runs against: ``--fake-mem-limit-mb``, else the CUDA device's total memory."""
    if s.fake_mem_limit_mb is not None:
        return float(s.fake_mem_limit_mb)
    if s.device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory / 2**20
    return None


def _allocated(s: BenchSettings) -> Optional[int]:
    """CUDA memory still allocated (after a collection); None on a CPU."""
    if s.device != "cuda":
        return None
    gc.collect()
    return torch.cuda.memory_allocated()


def _search_record(name: str, s: BenchSettings, limit: Optional[float]) -> dict:
    """The search's entry of the result, before its first try (status "running")."""
    out: dict[str, Any] = {k: None for k in SEARCH_FIELDS}
    out.update(row=name, start=s.batch, cap=s.max_batch_cap, resolution=s.search_resolution,
               budget_s=s.search_seconds, status="running", limit_mb=limit, tries=[],
               gradient_checkpointing=s.gradient_checkpointing,
               try_steps=f"1 warm-up + {s.search_steps} timed (the start: the row's own)")
    if name == "ds-zero3":
        out["note"] = ("ZeRO-3: DeepSpeed 0.19.8 keeps each engine's module alive after engine.destroy() "
                       "(partition_parameters.Init / PartitionedParameterCoordinator refer to it; seen on CPU), "
                       "so later tries carry earlier tries' weights: a lower bound; see leftover_mb")
    return out


def run_max_batch_search(name: str, s: BenchSettings, first_row: Optional[dict], vocab: int,
                         on_update: Optional[Callable[[dict], None]] = None, first_seconds: float = 0.0) -> dict:
    """``--max-batch-search`` for row ``name``: each try is a fresh ``measure`` at that batch (one warm-up,
    ``search_steps`` timed steps), freed completely before the next. ``first_row`` is the row already
    measured at ``s.batch`` (the start)."""
    limit = device_memory_mb(s)
    rows: dict[int, dict] = {}
    out = _search_record(name, s, limit)

    def try_batch(b: int) -> dict:
        sb = dataclasses.replace(s, batch=b, warmup=1, steps=s.search_steps, profile_dir=None, rounds=1)
        print(f"[bench] max-batch search {name}: batch {b} ...", file=sys.stderr, flush=True)
        before = _allocated(s)
        t0 = time.perf_counter()
        batch = _make_batch(sb, vocab)
        row = measure(name, sb, batch, profile=False)
        del batch
        seconds = time.perf_counter() - t0
        rows[b] = row
        t = _try_summary(row, seconds, 1)
        after = _allocated(s)
        # memory a try left allocated would shrink every later try: made visible, not hidden
        t["leftover_mb"] = None if before is None else (after - before) / 2**20
        return t

    def on_try(t: dict) -> None:
        out["tries"].append(t)
        out["predicted_max_batch"] = _linear_max_batch(out["tries"], limit)
        if on_update is not None:
            on_update(out)

    first = None
    if first_row is not None:
        rows[s.batch] = first_row
        first = _try_summary(first_row, first_seconds, s.warmup * s.rounds)
    res = search_max_batch(try_batch, s.batch, s.max_batch_cap, s.search_resolution, s.search_seconds, first=first,
                           on_try=on_try)
    best_row = rows.get(res["max_batch"]) if res["max_batch"] else None
    out.update(status=res["status"], max_batch=res["max_batch"], first_failing_batch=res["first_failing_batch"],
               failure=res["failure"], elapsed_s=res["elapsed_s"],
               best=best_row)
    out["predicted_max_batch"] = _linear_max_batch(out["tries"], limit)
    if on_update is not None:
        on_update(out)
    return out


def run_max_batch_searches(s: BenchSettings, rows: list[dict], vocab: int, seconds: dict[str, float],
                           searches: list[dict], publish: Callable[[], None]) -> None:
    """Search every ds-zeroN row of ``s.configs`` (``rows`` in the same order), each search's entry kept
    current in ``searches``; ``publish()`` after every change."""
    for i, name in enumerate(s.configs):
        if not name.startswith("ds-zero"):
            continue
        searches.append({})

        def update(partial: dict, _k: int = len(searches) - 1) -> None:
            searches[_k] = partial
            publish()

        print(f"[bench] max-batch search {name} from batch {s.batch} ...", file=sys.stderr, flush=True)
        try:
            run_max_batch_search(name, s, rows[i], vocab, update, first_seconds=seconds.get(name, 0.0))
        except Exception as e:  # the timed rows must survive a failing search
            traceback.print_exc(file=sys.stderr)
            searches[-1] = dict(searches[-1] or {"row": name}, status="error",
                                error=f"{type(e).__name__}: {e}"[:2000])
            publish()
