"""``hyperscale bench`` as a CPU smoke test: every configuration (the floor, HyperFormer++ in a plain loop,
static adapters, LoRA when peft is importable, full fine-tuning, and HyperFormer++ under DeepSpeed ZeRO
0/2/3 in one process) runs on the tiny backbone, the JSON has every row and field, and ratios are taken
against the floor measured in the same run. No timing is asserted. Also: activation checkpointing
(applied, recorded, numerically neutral), construction in the compute dtype, the largest-batch search
(its logic exactly; end to end through ``benchmarks/gpu_run.sh --dry-run``'s 11B phase, with a tiny
backbone and a simulated memory limit).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_env, saved_env
from hyperscale import bench
from hyperscale.bench import rows as bench_rows

PLAIN = ["floor", "hyperformer++", "adapters", "lora", "finetune"]
DEEPSPEED = ["ds-zero0", "ds-zero2", "ds-zero3"]
EVAL_FIELDS = ("task", "n", "batch", "labels", "rank_ms_per_example", "generate_ms_per_example", "speedup",
               "valid_generations", "valid_rate", "agreement_on_valid")


def _env() -> dict:
    """A launched process's environment (helpers.run_env: offline, CPU DeepSpeed, no rank variables: the
    benchmark sets its own)."""
    return run_env()


@pytest.fixture(scope="module", autouse=True)
def _leaves_no_process_group():
    """The in-process rows below start the benchmark's one-process group (and set its rank variables and
    DeepSpeed's logger levels), as ``hyperscale bench`` does for its whole process; gone after this module."""
    import logging

    from hyperscale.training import distributed as hdist

    levels = {n: logging.getLogger(n).level for n in ("DeepSpeed", "deepspeed")}
    with saved_env():
        yield
        hdist.leave()
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "hyperscale.cli", "bench", "--device", "cpu", "--threads", "1",
           "--backbone", "t5-tiny", "--precision", "bf16", "--batch", "2", "--src-len", "16", "--tgt-len", "4",
           "--warmup", "1", "--steps", "2", "--zero-stages", "0,2,3", "--tasks", "rte,mrpc",
           "--eval", "--eval-n", "6", "--eval-batch", "3", "--eval-train-steps", "2",
           "--profile-dir", str(out / "profile"), "--profile-steps", "1",
           "--json-out", str(out / "bench.json"), "--table-out", str(out / "bench.md")]
    proc = subprocess.run(cmd, cwd=str(REPO), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads((out / "bench.json").read_text())
    result["_profile_files"] = sorted(p.name for p in (out / "profile").glob("*.txt"))
    return result, (out / "bench.md").read_text(), proc


@pytest.mark.slow
def test_every_configuration_has_a_complete_row(bench_run):
    result, _, _ = bench_run
    rows = {r["name"]: r for r in result["rows"]}
    assert [r["name"] for r in result["rows"]] == PLAIN + DEEPSPEED  # DeepSpeed rows run last
    for row in result["rows"]:
        assert set(bench.ROW_FIELDS) <= set(row), row["name"]
        if row["name"] == "lora" and importlib.util.find_spec("peft") is None:
            assert row["status"] == "skipped" and "peft" in row["note"]
            continue
        assert row["status"] == "ok", (row["name"], row["error"])
        assert row["steps"] == 2
        assert row["ms_median"] > 0 and row["ms_min"] <= row["ms_median"] <= row["ms_max"]
        assert row["tokens_per_s"] == pytest.approx(2 * (16 + 4) / (row["ms_median"] / 1000.0))
        assert row["peak_mem_mb"] is not None and row["mem_metric"].startswith("cpu")
        assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"])
        assert row["precision"] == "bf16"
    for name in DEEPSPEED:
        assert rows[name]["runner"] == "deepspeed" and rows[name]["zero_stage"] == int(name[-1])
        assert rows[name]["method"] == "hyperformer++"
    assert rows["floor"]["trainable_params"] == 0
    assert 0 < rows["adapters"]["trainable_params"] < rows["finetune"]["trainable_params"]
    assert rows["hyperformer++"]["trainable_params"] == rows["ds-zero2"]["trainable_params"]
    assert rows["finetune"]["trainable_params"] == rows["finetune"]["total_params"]
    for row in result["rows"]:
        if row["status"] == "ok":
            assert len(row["times_ms"]) == 2 and row["rounds"] == 1
            assert row["profile"]["aten_ops_per_step"] > 0, row["profile"]
            assert f"{row['name'].replace('+', 'p')}.txt" in result["_profile_files"]
    # the per-slot adapter hooks and the hypernetwork dispatch more ops than the bare backbone
    assert rows["hyperformer++"]["profile"]["aten_ops_per_step"] > rows["floor"]["profile"]["aten_ops_per_step"]


@pytest.mark.slow
def test_ratios_are_against_the_floor_of_the_same_run(bench_run):
    result, _, _ = bench_run
    rows = {r["name"]: r for r in result["rows"] if r["status"] == "ok"}
    floor, plain = rows["floor"]["ms_median"], rows["hyperformer++"]["ms_median"]
    assert rows["floor"]["ratio_to_floor"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["ratio_to_floor"] == pytest.approx(row["ms_median"] / floor)
        if row["runner"] == "deepspeed":
            assert row["ratio_to_plain"] == pytest.approx(row["ms_median"] / plain)
        else:
            assert row["ratio_to_plain"] is None


@pytest.mark.slow
def test_eval_benchmark_and_report(bench_run):
    result, table, proc = bench_run
    ev = result["eval"]
    assert "error" not in ev, ev
    assert set(EVAL_FIELDS) <= set(ev)
    assert ev["task"] == "rte" and ev["n"] == 6 and ev["labels"] == ["0", "1"]
    assert ev["rank_ms_per_example"] > 0 and ev["generate_ms_per_example"] > 0
    assert ev["speedup"] == pytest.approx(ev["generate_ms_per_example"] / ev["rank_ms_per_example"])
    assert 0 <= ev["valid_generations"] <= ev["n"]
    assert ev["agreement_on_valid"] is None or 0.0 <= ev["agreement_on_valid"] <= 1.0
    env = result["environment"]
    assert env["torch"] and env["transformers"] and env["deepspeed"] and env["date"]
    for name in PLAIN + DEEPSPEED:
        assert f"| {name} |" in table
    assert "eval (rte" in table and table.strip() in proc.stdout


def _args(**kw) -> argparse.Namespace:
    args = bench.build_arg_parser().parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_settings_defaults_and_selection():
    s = bench.settings_from_args(_args(device="cpu"))
    assert (s.backbone, s.precision, s.batch) == ("t5-tiny", "fp32", 8)
    assert s.configs == PLAIN + DEEPSPEED
    s = bench.settings_from_args(_args(device="cpu", zero_stages="1", only=None))
    assert s.configs == PLAIN + ["ds-zero1"]
    s = bench.settings_from_args(_args(device="cpu", only="floor,ds-zero3", eval=True, tasks="mrpc"))
    assert s.configs == ["floor", "ds-zero3"] and s.tasks == ["mrpc", "rte"]  # the eval task joins the model
    assert bench.settings_from_args(_args(device="cpu", eval_only=True)).configs == []
    with pytest.raises(ValueError, match="unknown configuration"):
        bench.settings_from_args(_args(device="cpu", only="floor,nope"))
    with pytest.raises(ValueError, match="ZeRO stage"):
        bench.settings_from_args(_args(device="cpu", zero_stages="4"))
    with pytest.raises(ValueError, match="not a preset"):
        bench.settings_from_args(_args(device="cpu", backbone="t5-huge"))


def test_trainer_ds_config_is_used_per_stage():
    s = bench.settings_from_args(_args(device="cpu", batch=4, precision="bf16"))
    for stage in (0, 2, 3):
        cfg = bench.trainer_ds_config(s, stage)
        assert cfg["zero_optimization"]["stage"] == stage
        assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 1
        assert cfg["bf16"]["enabled"] is True


def test_ratios_without_floor_are_none():
    rows = [dict(bench_rows._empty_row("hyperformer++", bench.BenchSettings()), ms_median=10.0, runner="plain"),
            dict(bench_rows._empty_row("ds-zero2", bench.BenchSettings()), ms_median=12.0, runner="deepspeed")]
    bench.add_ratios(rows)
    assert rows[0]["ratio_to_floor"] is None and rows[1]["ratio_to_plain"] == pytest.approx(1.2)


def test_rounds_pool_timed_steps():
    s = bench.BenchSettings(batch=2, src_len=3, tgt_len=1)
    a = dict(bench_rows._empty_row("floor", s), times_ms=[3.0, 1.0], rounds=1, peak_mem_mb=5.0, loss_last=1.0)
    b = dict(bench_rows._empty_row("floor", s), times_ms=[2.0, 10.0], rounds=1, peak_mem_mb=7.0, loss_last=0.5)
    bench_rows._set_stats(a, s)
    merged = bench_rows._merge_round(a, b, s)
    assert merged["times_ms"] == [3.0, 1.0, 2.0, 10.0] and merged["rounds"] == 2 and merged["steps"] == 4
    assert merged["ms_median"] == pytest.approx(2.5) and merged["ms_min"] == 1.0 and merged["ms_max"] == 10.0
    assert merged["peak_mem_mb"] == 7.0 and merged["loss_last"] == 0.5
    assert merged["tokens_per_s"] == pytest.approx(2 * 4 / 0.0025)
    failed = dict(bench_rows._empty_row("floor", s), status="error", error="boom")
    assert bench_rows._merge_round(merged, failed, s) is failed  # a failure in any round is reported


# ------------------------------------------------------------------ activation checkpointing, bf16 build
@pytest.mark.slow
def test_gradient_checkpointing_is_applied_and_changes_no_number():
    """--gradient-checkpointing: active in the row's backbone, recorded, and (recomputation with the same
    dropout masks) the losses after two optimizer steps equal those without it."""
    import torch

    from hyperscale.modeling.presets import preset_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("floor", "hyperformer++"):
            rows = {}
            for ckpt in (False, True):
                s = bench.BenchSettings(batch=2, src_len=16, tgt_len=4, warmup=0, steps=3, tasks=["rte", "mrpc"],
                                            gradient_checkpointing=ckpt)
                batch = bench_rows._make_batch(s, preset_config(s.preset).vocab_size)
                rows[ckpt] = bench.measure(name, s, batch, profile=False)
                assert rows[ckpt]["status"] == "ok", rows[ckpt]["error"]
                assert rows[ckpt]["gradient_checkpointing"] is ckpt and rows[ckpt]["oom"] is False
            assert rows[True]["loss_first"] == pytest.approx(rows[False]["loss_first"], rel=1e-6)
            assert rows[True]["loss_last"] == pytest.approx(rows[False]["loss_last"], rel=1e-6)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_compiled_rows_train_the_same_losses_as_eager():
    """hyperformer++-compiled (plain loop, the model compiled in place) and ds-zero2-compiled (the trainer's engine
    with engine.compile): the losses of 3 optimizer steps equal the eager rows'. aot_eager: inductor's CPU code
    generation would take a minute here; the graphs are the same."""
    import torch

    from hyperscale.modeling.presets import preset_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for eager, compiled in (("hyperformer++", "hyperformer++-compiled"), ("ds-zero2", "ds-zero2-compiled")):
            rows = {}
            for name in (eager, compiled):
                s = bench.BenchSettings(batch=2, src_len=16, tgt_len=4, warmup=0, steps=3, tasks=["rte", "mrpc"],
                                        compile_backend="aot_eager")
                batch = bench_rows._make_batch(s, preset_config(s.preset).vocab_size)
                rows[name] = bench.measure(name, s, batch, profile=False)
                assert rows[name]["status"] == "ok", rows[name]["error"]
            assert "aot_eager" in rows[compiled]["note"]
            assert rows[compiled]["loss_first"] == pytest.approx(rows[eager]["loss_first"], rel=1e-5)
            assert rows[compiled]["loss_last"] == pytest.approx(rows[eager]["loss_last"], rel=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_build_dtype_constructs_in_the_compute_dtype():
    import torch

    s = bench.BenchSettings(precision="bf16", tasks=["rte"])
    model = bench_rows._hyperscale_model(s, "hyperformer++")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # backbone and adapter bank alike
    assert torch.get_default_dtype() == torch.float32  # restored
    s = bench.BenchSettings(precision="bf16", tasks=["rte"], build_dtype="fp32", gradient_checkpointing=True)
    model = bench_rows._hyperscale_model(s, "hyperformer++")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert bench_rows.checkpointing_active(model.backbone) and model._checkpointing()


# ------------------------------------------------------------------ largest-batch search: the logic
def _fake_try(fits, log, error_at=None, clock=None, seconds=1.0):
    def try_batch(b):
        log.append(b)
        if clock is not None:
            clock[0] += seconds
        if b == error_at:
            return {"batch": b, "status": "error", "seconds": seconds, "error": "RuntimeError: boom"}
        return {"batch": b, "status": "ok" if fits(b) else "oom", "seconds": seconds}
    return try_batch


def test_search_doubles_then_bisects_to_the_boundary():
    log = []
    r = bench.search_max_batch(_fake_try(lambda b: b <= 37, log), start=4, cap=1000)
    assert log == [4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert (r["status"], r["max_batch"], r["first_failing_batch"], r["failure"]) == ("converged", 37, 38, "oom")
    assert r["best"]["batch"] == 37 and [t["batch"] for t in r["tries"]] == log
    log = []  # coarser resolution: stops once the bracket is 8 wide
    r = bench.search_max_batch(_fake_try(lambda b: b <= 37, log), start=4, cap=1000, resolution=8)
    assert log == [4, 8, 16, 32, 64, 48, 40] and (r["max_batch"], r["first_failing_batch"]) == (32, 40)


def test_search_start_that_does_not_fit_cap_and_nothing_fits():
    log = []
    r = bench.search_max_batch(_fake_try(lambda b: b <= 5, log), start=16, cap=64)
    assert log == [16, 8, 4, 6, 5] and (r["status"], r["max_batch"], r["first_failing_batch"]) == ("converged", 5, 6)
    log = []
    r = bench.search_max_batch(_fake_try(lambda b: True, log), start=3, cap=20)
    assert log == [3, 6, 12, 20] and (r["status"], r["max_batch"], r["first_failing_batch"]) == ("cap", 20, None)
    log = []
    r = bench.search_max_batch(_fake_try(lambda b: False, log), start=4, cap=8)
    assert log == [4, 2, 1] and (r["max_batch"], r["first_failing_batch"], r["best"]) == (None, 1, None)
    log = []  # the resolution applies once something fits: a coarse search still finds a small batch
    r = bench.search_max_batch(_fake_try(lambda b: b <= 20, log), start=256, cap=2048, resolution=128)
    assert log == [256, 128, 64, 32, 16] and (r["max_batch"], r["first_failing_batch"]) == (16, 32)


def test_search_stops_on_other_errors_and_on_the_time_budget():
    log = []
    r = bench.search_max_batch(_fake_try(lambda b: True, log, error_at=16), start=4, cap=64)
    assert log == [4, 8, 16] and (r["status"], r["max_batch"], r["first_failing_batch"], r["failure"]) == \
        ("error", 8, 16, "error")
    log, clock = [], [0.0]  # 10 s per try; the next try's estimate is the last fit's 10 s x the batch ratio
    r = bench.search_max_batch(_fake_try(lambda b: True, log, clock=clock, seconds=10.0), start=4, cap=64,
                                   budget_s=35.0, clock=lambda: clock[0])
    assert log == [4, 8] and (r["status"], r["max_batch"], r["first_failing_batch"]) == ("budget", 8, None)
    log = []  # an already measured start is not run again
    first = {"batch": 4, "status": "ok", "seconds": 1.0, "ms_median": 5.0}
    r = bench.search_max_batch(_fake_try(lambda b: b <= 9, log), start=4, cap=64, first=first)
    assert log == [8, 16, 12, 10, 9] and r["tries"][0]["ms_median"] == 5.0 and r["max_batch"] == 9


def test_search_settings_are_validated():
    with pytest.raises(ValueError, match="ds-zeroN"):
        bench.settings_from_args(_args(device="cpu", only="hyperformer++", max_batch_search=True))
    with pytest.raises(ValueError, match="below --batch"):
        bench.settings_from_args(_args(device="cpu", only="ds-zero2", max_batch_search=True, batch=8,
                                           max_batch_cap=4))
    s = bench.settings_from_args(_args(device="cpu", only="ds-zero2", max_batch_search=True,
                                           gradient_checkpointing=True, fake_mem_limit_mb=100.0))
    assert s.max_batch_search and s.gradient_checkpointing and s.fake_mem_limit_mb == 100.0


# ------------------------------------------------------------------ phase 3 of gpu_run.sh, dry run
# The 11B phase with a tiny backbone: DeepSpeed ZeRO-2 bf16 + activation checkpointing, then the
# largest-batch search against a simulated 372 MB device. 128 target tokens make the fp32 logits and their
# gradient dominate the peak (~55 MB per example, +-3 MB between runs); MALLOC_MMAP_THRESHOLD_ makes glibc
# return freed tensors to the OS, so that sampled RSS follows live memory from one try to the next.
FAKE_MB = 372.0


@pytest.fixture(scope="module")
def phase3(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_run")
    env = _env()
    env.update(OUT=str(out), MALLOC_MMAP_THRESHOLD_="65536", BENCH_BATCHES="", BENCH_EVAL="0", BENCH_PROFILE="0",
               BENCH_SRC_LEN="8", BENCH_TGT_LEN="128", BENCH_XXL_BACKBONE="t5-tiny", BENCH_XXL_BATCH="1",
               BENCH_XXL_SEARCH_START="1", BENCH_XXL_CAP="32", BENCH_XXL_RESOLUTION="1",
               BENCH_XXL_FAKE_MEM_MB=str(int(FAKE_MB)), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_run.sh"), "--dry-run"], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"gpu_run.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out, proc


@pytest.mark.slow
def test_phase3_runs_deepspeed_with_checkpointing(phase3):
    out, proc = phase3
    result = json.loads((out / "bench_xxl_b1.json").read_text())
    assert result["settings"]["gradient_checkpointing"] is True and result["settings"]["backbone"] == "t5-tiny"
    (row,) = result["rows"]
    assert row["status"] == "ok", row["error"]
    assert (row["name"], row["zero_stage"], row["precision"], row["batch"]) == ("ds-zero2", 2, "bf16", 1)
    assert row["gradient_checkpointing"] is True and row["oom"] is False
    summary = (out / "summary.md").read_text()
    assert "## bench_xxl_b1" in summary and "activation checkpointing" in summary


@pytest.mark.slow
def test_phase3_max_batch_search_finds_the_boundary(phase3):
    out, _ = phase3
    result = json.loads((out / "bench_xxl_maxbatch.json").read_text())
    (sr,) = result["max_batch_search"]
    assert set(bench.SEARCH_FIELDS) <= set(sr)
    assert (sr["row"], sr["status"], sr["limit_mb"], sr["start"], sr["cap"]) == \
        ("ds-zero2", "converged", FAKE_MB, 1, 32)
    tries = sr["tries"]
    # every try is classified by its own measured peak against the simulated limit
    for t in tries:
        assert t["status"] in ("ok", "oom"), t
        assert (t["peak_mem_mb"] <= FAKE_MB) == (t["status"] == "ok"), t
    # the boundary: the largest batch that fit, next to the smallest that did not
    fit = [t["batch"] for t in tries if t["status"] == "ok"]
    assert sr["max_batch"] == max(fit) and sr["first_failing_batch"] == sr["max_batch"] + 1
    assert min(t["batch"] for t in tries if t["status"] == "oom") == sr["first_failing_batch"]
    # ... where the memory growth puts it (~55 MB per example: batch 6 fits, 7 does not)
    assert abs(sr["max_batch"] - sr["predicted_max_batch"]) <= 1 and 4 <= sr["max_batch"] <= 8
    # doubling, then bisection: the same tries as the search logic gives for these outcomes
    outcome = {t["batch"]: t["status"] for t in tries}
    log = []
    bench.search_max_batch(_fake_try(lambda b: outcome[b] == "ok", log), start=1, cap=32)
    assert log == [t["batch"] for t in tries]
    best = sr["best"]
    assert best["batch"] == sr["max_batch"] and best["status"] == "ok" and best["gradient_checkpointing"] is True
    assert best["ms_median"] > 0 and best["tokens_per_s"] > 0 and best["peak_mem_mb"] <= FAKE_MB
    table = (out / "bench_xxl_maxbatch.md").read_text()
    assert f"max batch (ds-zero2, converged, limit {FAKE_MB:,.0f} MB" in table
    assert f"{sr['max_batch']} fits" in table and f"{sr['first_failing_batch']} does not (oom)" in table
