"""``hyperscale bench`` as a CPU smoke test: every configuration (the floor, HyperFormer++ in a plain loop,
static adapters, LoRA when peft is importable, full fine-tuning, and HyperFormer++ under DeepSpeed ZeRO
0/2/3 in one process) runs on the tiny backbone, the JSON has every row and field, and ratios are taken
against the floor measured in the same run. No timing is asserted.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hyperscale import benchmark  # noqa: E402

PLAIN = ["floor", "hyperformer++", "adapters", "lora", "finetune"]
DEEPSPEED = ["ds-zero0", "ds-zero2", "ds-zero3"]
EVAL_FIELDS = ("task", "n", "batch", "labels", "rank_ms_per_example", "generate_ms_per_example", "speedup",
               "valid_generations", "valid_rate", "agreement_on_valid")


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu")
    # DeepSpeed JIT-builds its CPU shm comm op once per cache (~40 s cold): one cache per virtualenv
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):  # the benchmark sets its own
        env.pop(key, None)
    return env


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


def test_every_configuration_has_a_complete_row(bench_run):
    result, _, _ = bench_run
    rows = {r["name"]: r for r in result["rows"]}
    assert [r["name"] for r in result["rows"]] == PLAIN + DEEPSPEED  # DeepSpeed rows run last
    for row in result["rows"]:
        assert set(benchmark.ROW_FIELDS) <= set(row), row["name"]
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
    args = benchmark.build_arg_parser().parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_settings_defaults_and_selection():
    s = benchmark.settings_from_args(_args(device="cpu"))
    assert (s.backbone, s.precision, s.batch) == ("t5-tiny", "fp32", 8)
    assert s.configs == PLAIN + DEEPSPEED
    s = benchmark.settings_from_args(_args(device="cpu", zero_stages="1", only=None))
    assert s.configs == PLAIN + ["ds-zero1"]
    s = benchmark.settings_from_args(_args(device="cpu", only="floor,ds-zero3", eval=True, tasks="mrpc"))
    assert s.configs == ["floor", "ds-zero3"] and s.tasks == ["mrpc", "rte"]  # the eval task joins the model
    assert benchmark.settings_from_args(_args(device="cpu", eval_only=True)).configs == []
    with pytest.raises(ValueError, match="unknown configuration"):
        benchmark.settings_from_args(_args(device="cpu", only="floor,nope"))
    with pytest.raises(ValueError, match="ZeRO stage"):
        benchmark.settings_from_args(_args(device="cpu", zero_stages="4"))
    with pytest.raises(ValueError, match="not a preset"):
        benchmark.settings_from_args(_args(device="cpu", backbone="t5-huge"))


def test_trainer_ds_config_is_used_per_stage():
    s = benchmark.settings_from_args(_args(device="cpu", batch=4, precision="bf16"))
    for stage in (0, 2, 3):
        cfg = benchmark.trainer_ds_config(s, stage)
        assert cfg["zero_optimization"]["stage"] == stage
        assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 1
        assert cfg["bf16"]["enabled"] is True


def test_ratios_without_floor_are_none():
    rows = [dict(benchmark._empty_row("hyperformer++", benchmark.BenchSettings()), ms_median=10.0, runner="plain"),
            dict(benchmark._empty_row("ds-zero2", benchmark.BenchSettings()), ms_median=12.0, runner="deepspeed")]
    benchmark.add_ratios(rows)
    assert rows[0]["ratio_to_floor"] is None and rows[1]["ratio_to_plain"] == pytest.approx(1.2)


def test_rounds_pool_timed_steps():
    s = benchmark.BenchSettings(batch=2, src_len=3, tgt_len=1)
    a = dict(benchmark._empty_row("floor", s), times_ms=[3.0, 1.0], rounds=1, peak_mem_mb=5.0, loss_last=1.0)
    b = dict(benchmark._empty_row("floor", s), times_ms=[2.0, 10.0], rounds=1, peak_mem_mb=7.0, loss_last=0.5)
    benchmark._set_stats(a, s)
    merged = benchmark._merge_round(a, b, s)
    assert merged["times_ms"] == [3.0, 1.0, 2.0, 10.0] and merged["rounds"] == 2 and merged["steps"] == 4
    assert merged["ms_median"] == pytest.approx(2.5) and merged["ms_min"] == 1.0 and merged["ms_max"] == 10.0
    assert merged["peak_mem_mb"] == 7.0 and merged["loss_last"] == 0.5
    assert merged["tokens_per_s"] == pytest.approx(2 * 4 / 0.0025)
    failed = dict(benchmark._empty_row("floor", s), status="error", error="boom")
    assert benchmark._merge_round(merged, failed, s) is failed  # a failure in any round is reported
