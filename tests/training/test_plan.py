"""The memory plan (hyperscale/training/plan.py, activations.py; ``hyperscale plan``).

- Model states: for t5-tiny shapes (HyperFormer++, two tasks) on 1 and 2 ranks, ZeRO 0-3, fp32 and bf16, the plan's
  per-rank bytes of frozen weights, trainable weights, fp32 masters, gradients and Adam states, and of DeepSpeed's
  reduce buckets and all-reduce copies, equal what a built engine holds on that rank, exactly
  (tests/training/plan_probe.py measures them; 1 rank in this process, 2 ranks in one torchrun launch).
- Activations: for t5-small shapes, the fake-tensor prediction against the same step on real CPU tensors under the
  same tracker (within 5 %), and the tracker against the CPU allocator's own accounting (the profiler's memory
  events, within 5 %), with and without gradient checkpointing.
- The recommendation: a replicated backbone (ZeRO 0-2) where it fits, ZeRO-3 where only sharding fits.
- ``hyperscale plan``: bad input is one line and exit 2; ``--json`` has the documented shape.
- ``benchmarks/plan_check.py`` (the GPU acceptance script's plan phase; end to end in tests/test_gpu_accept.py):
  its verdict (tolerance, the message on FAIL) on made-up numbers, and its CPU meter's accounting on known
  allocations.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from hyperscale.cli import main as cli_main
from hyperscale.training.activations import (
    FakeStepper,
    LiveStorageTracker,
    build_model,
    make_batch,
    set_checkpointing,
    step_peak,
)
from hyperscale.training.config import load_config
from hyperscale.training.ds_config import DS_CONFIG_DIR, build_ds_config
from hyperscale.training.plan import (
    ALLOWANCE_BYTES,
    CATEGORIES,
    GiB,
    buffer_parts,
    make_plan,
    model_states,
    parameter_specs,
    parse_memory,
    zero_settings,
)
from plan_probe import probe, run_config
from helpers import launch, log_tail

HERE = Path(__file__).resolve().parent
PROBE = HERE / "plan_probe.py"
PLAN_CHECK = HERE.parents[1] / "benchmarks" / "plan_check.py"
CONFIGS = [f"z{stage}-{precision}" for stage in range(4) for precision in ("fp32", "bf16")]
STATES = ("frozen", "trainable", "master", "gradients", "optimizer")


def planned(cid: str, world: int, rank: int) -> dict[str, int]:
    """What the plan says rank ``rank`` of ``world`` holds for the probe's configuration ``cid``."""
    cfg = run_config(cid, world)
    params = parameter_specs(build_model(cfg, torch.float32, torch.device("meta")))
    z = zero_settings(build_ds_config(cfg, world))
    parts = buffer_parts(params, z, world)
    return {**model_states(params, z, world, rank), "reduce_bucket": parts["reduce_bucket"],
            "allreduce_copy": parts["allreduce_copy"]}


def _differences(cid: str, rank: int, measured: dict, plan: dict) -> list[str]:
    return [f"{cid} rank {rank} {k}: engine {measured[k]:,}, plan {plan[k]:,}" for k in plan if measured[k] != plan[k]]


# ------------------------------------------------------------------------------------------ model states
def test_model_states_equal_the_engine_on_one_rank(world1_group):
    bad = []
    for cid in CONFIGS:
        bad += _differences(cid, 0, probe(cid, 1), planned(cid, 1, 0))
    assert not bad, "\n".join(bad)


@pytest.mark.distributed
def test_model_states_equal_the_engine_on_two_ranks(tmp_path):
    out, log = tmp_path / "holdings.json", tmp_path / "probe.log"
    proc = launch([str(PROBE)], ["--out", str(out), *CONFIGS], 2, log, timeout=300, preloaded=True)
    assert proc.returncode == 0, log_tail(log)
    measured = json.loads(out.read_text())
    assert sorted(measured) == sorted(CONFIGS)
    bad = []
    for cid, ranks in measured.items():
        assert sorted(ranks) == ["0", "1"]
        for rank, held in ranks.items():
            bad += _differences(cid, int(rank), held, planned(cid, 2, int(rank)))
    assert not bad, "\n".join(bad)
    # the two ranks of a ZeRO-1/2 fp32 run hold different gradients (where the partitions cut the parameters)
    assert measured["z2-fp32"]["0"]["gradients"] != measured["z2-fp32"]["1"]["gradients"]


# ------------------------------------------------------------------------------------------- activations
SMALL = ["model.backbone=preset:t5-small", "data.max_source_length=64", "data.max_target_length=8",
         "data.tasks=[rte,cb]"]
BATCH = 4


def _allocator_peak(prof) -> int:
    """The CPU allocator's peak over a profiled region, from its allocation and free events."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


class Small:
    """t5-small shapes per precision: the run config, its fake stepper and a real model (built once each)."""

    def __init__(self) -> None:
        self._made: dict = {}

    def __call__(self, precision: str) -> tuple:
        if precision not in self._made:
            cfg = load_config(None, [*SMALL, f"train.precision={precision}"])
            torch.manual_seed(0)
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
            self._made[precision] = (cfg, FakeStepper(cfg), build_model(cfg, dtype, torch.device("cpu")))
        return self._made[precision]


@pytest.fixture(scope="module")
def small() -> Small:
    return Small()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_fake_activations_equal_real_ones(small, precision, checkpointing):
    from torch.profiler import ProfilerActivity, profile

    cfg, stepper, real = small(precision)
    fake = stepper.peak(BATCH, checkpointing)
    set_checkpointing(real, checkpointing)
    batch = make_batch(BATCH, cfg.data.max_source_length, cfg.data.max_target_length)
    tracker = LiveStorageTracker()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        tracked = step_peak(real, batch, 0, tracker)
    allocator = _allocator_peak(prof)
    assert fake > 10 * 2**20, fake  # t5-small at 4 x (64 + 8) tokens: tens of MiB
    assert abs(fake - tracked) <= 0.05 * tracked, (fake, tracked)
    assert abs(tracked - allocator) <= 0.05 * allocator, (tracked, allocator)
    if checkpointing:  # checkpointing keeps a fraction of the plain step's activations
        assert fake < 0.5 * stepper.peak(BATCH, False)


# ----------------------------------------------------------------------------------------- recommendation
def test_recommends_a_replicated_backbone_where_it_fits_and_zero3_where_it_must(small, tmp_path):
    cfg, stepper, _ = small("fp32")
    # small DeepSpeed buffers (a user JSON), so that at t5-small shapes sharding saves more than ZeRO-3's buffers
    # cost (with the shipped 5e8-element buckets and 1e9 live parameters it never does below billions of weights)
    ds = json.loads((DS_CONFIG_DIR / "zero3_fp32.json").read_text())
    ds["zero_optimization"].update(stage="auto", stage3_max_live_parameters=1_000_000,
                                   stage3_prefetch_bucket_size=100_000)
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = cfg.with_overrides(["train.global_batch_size=64", "train.micro_batch_size=8",
                              f"deepspeed.config={tmp_path / 'ds.json'}", "deepspeed.reduce_bucket_size=1000000",
                              "deepspeed.allgather_bucket_size=1000000"])
    roomy = make_plan(cfg, 8, 1, 80 * GiB, stepper=stepper)
    assert roomy.recommended.zero_stage == 0 and not roomy.recommended.offload  # fp32: ZeRO-0 first
    assert roomy.recommended.micro_batch_size == 8 and "fits replicated" in roomy.recommended.reason
    at_one = {(s.zero_stage, s.offload): s.per_gpu_bytes["total"] - s.per_gpu_bytes["activations"]
              + stepper.peak(1, False) for s in roomy.stages}
    replicated, sharded = min(at_one[(k, False)] for k in (0, 1, 2)), at_one[(3, False)]
    assert sharded < replicated - 100 * 2**20, (sharded, replicated)
    # a GPU too small for the replicated backbone, large enough for its shards (simulated)
    tight = make_plan(cfg, 8, 1, (sharded + replicated) // 2, stepper=stepper)
    assert (tight.recommended.zero_stage, tight.recommended.offload) == (3, False), tight.recommended
    assert tight.recommended.micro_batch_size >= 1 and "replicated backbone does not fit" in tight.recommended.reason
    assert [s.fits for s in tight.stages][:3] == [False, False, False]


# --------------------------------------------------------------------------------------------------- CLI
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, says", [
    (["--gpus-per-node", "1", "deepspeed.zero_stage=5"], "deepspeed.zero_stage must be 0-3"),
    (["--gpus-per-node", "1", "--gpu-memory", "80 parsecs"], "--gpu-memory '80 parsecs' is not a memory size"),
    (["--gpus-per-node", "1", "--gpu-memory=-4GiB"], "--gpu-memory '-4GiB' is not a memory size"),
    (["--gpus-per-node", "0"], "--gpus-per-node and --nodes must be at least 1"),
    (["--gpus-per-node", "3"], "train.global_batch_size=16 cannot be split evenly over 3 ranks"),
], ids=["stage", "memory-unit", "memory-negative", "no-gpus", "indivisible"])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, says):
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyperscale: error: ") and says in lines[0], err


def test_fits_nowhere_is_one_line_saying_what_would_make_it_fit(capsys):
    code, out, err = _cli(capsys, "--gpus-per-node", "1", "--gpu-memory", "1GiB")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("hyperscale: error: "), err
    assert "fits no ZeRO stage on 1 GPU(s) of 1.0 GiB" in err and "it would fit with" in err, err
    assert "GPUs with at least" in err, err


def test_parse_memory():
    assert parse_memory("80GiB") == 80 * GiB
    assert parse_memory("40GB") == 40 * 10**9
    assert parse_memory("81920MiB") == 80 * GiB
    assert parse_memory("1.5 gib") == int(1.5 * GiB)
    assert parse_memory("85899345920") == 80 * GiB


def test_json_shape(capsys):
    code, out, err = _cli(capsys, "--gpus-per-node", "2", "--gpu-memory", "80GiB", "--json",
                          "train.global_batch_size=16", "train.micro_batch_size=8")
    assert code == 0, err
    plan = json.loads(out)
    assert set(plan) == {"stages", "recommended"}
    assert [(s["zero_stage"], s["offload"]) for s in plan["stages"]] == [(0, False), (1, False), (2, False),
                                                                        (3, False), (3, True)]
    for s in plan["stages"]:
        assert set(s) == {"zero_stage", "offload", "per_gpu_bytes", "fits", "max_micro_batch"}
        assert type(s["zero_stage"]) is int and type(s["offload"]) is bool and type(s["fits"]) is bool
        assert type(s["max_micro_batch"]) is int and s["max_micro_batch"] == 8  # 16 / 2 GPUs, tiny model
        b = s["per_gpu_bytes"]
        assert list(b) == list(CATEGORIES) and all(type(v) is int and v >= 0 for v in b.values())
        assert b["total"] == sum(v for k, v in b.items() if k != "total")
        assert b["allowance"] == ALLOWANCE_BYTES and s["fits"]
    rec = plan["recommended"]
    assert set(rec) == {"zero_stage", "offload", "micro_batch_size", "reason"}
    # no gradient accumulation (8 x 2 GPUs = 16): ZeRO-0, fastest, loses nothing to bf16 accumulation
    assert (rec["zero_stage"], rec["offload"], rec["micro_batch_size"]) == (0, False, 8)
    assert type(rec["reason"]) is str and "\n" not in rec["reason"]
    frozen = [s["per_gpu_bytes"]["frozen"] for s in plan["stages"]]
    assert frozen[0] == frozen[1] == frozen[2] > frozen[3] >= frozen[4]  # ZeRO-3 shards the frozen backbone


def test_text_output(capsys):
    code, out, err = _cli(capsys, "--gpus-per-node", "1", "--gpu-memory", "80GiB")
    assert code == 0, err
    assert "memory plan: preset:t5-tiny" in out and "ZeRO-3 + offload" in out and "recommended: ZeRO-" in out


# ------------------------------------------------------------------------------- benchmarks/plan_check.py
@pytest.fixture(scope="module")
def plan_check():
    """benchmarks/plan_check.py as a module (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("hyperscale_bench_plan_check", PLAN_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_plan_check_verdict(plan_check):
    MiB = 2**20
    per = {**{k: 0 for k in CATEGORIES}, "activations": 7 * GiB, "buffers": GiB, "allowance": ALLOWANCE_BYTES}
    per["total"] = sum(v for k, v in per.items() if k != "total")
    assert plan_check.planned_peak(per) == 8 * GiB  # max_memory_allocated never holds the allowance

    v = plan_check.Verdict("ZeRO-2", 10 * GiB, 9 * GiB)
    assert v.ok and round(v.ratio, 3) == 1.111
    assert v.line() == "PASS ZeRO-2: plan 10.00 GiB, measured 9.00 GiB, plan/measured 1.11 (within 15 %)"
    # the tolerance is of the measured peak, its bound included
    assert plan_check.Verdict("ZeRO-3", 115 * MiB, 100 * MiB).ok
    assert plan_check.Verdict("ZeRO-3", 85 * MiB, 100 * MiB).ok
    over = plan_check.Verdict("ZeRO-3", 116 * MiB, 100 * MiB)
    assert not over.ok
    assert over.line() == ("FAIL ZeRO-3: plan 0.11 GiB, measured 0.10 GiB, plan/measured 1.16: the plan overstates "
                           "the peak by 16 % (tolerance 15 %)")
    under = plan_check.Verdict("ZeRO-2", 8 * GiB, 10 * GiB, tolerance=0.1)
    assert not under.ok and under.line().endswith("the plan understates the peak by 20 % (tolerance 10 %)")
    nothing = plan_check.Verdict("ZeRO-2", 8 * GiB, 0)
    assert not nothing.ok and "nothing was measured" in nothing.line()


def test_plan_check_cpu_meter_counts_the_allocator(plan_check):
    """Allocated bytes relative to the stage's start: after the build, the peak over the steps, between steps."""
    MiB = 2**20
    earlier = torch.empty(3 * MiB, dtype=torch.uint8)  # allocated before the stage: neither counted nor its free
    meter = plan_check.CpuMeter()
    with meter.stage():
        with meter.build():
            weights = torch.empty(MiB, dtype=torch.uint8)
            del earlier
        with meter.steps():
            kept = []
            for _ in range(2):
                activations = torch.empty(4 * MiB, dtype=torch.uint8)
                kept.append(torch.empty(MiB // 2, dtype=torch.uint8))
                del activations
                meter.step_done()
    m = meter.result
    assert (m.after_build, m.peak, m.after_steps) == (MiB, 6 * MiB, 2 * MiB), m
    assert weights.numel() == MiB and len(kept) == 2
