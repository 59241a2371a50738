"""Batch geometry at any rank count and the automatic settings (hyperscale/training/geometry.py, hyperscale/training/auto.py).

- Every shipped config at 1, 2, 8, 16 and 32 ranks: the resolved geometry is valid (global = micro x ranks x
  accumulation, the micro-batch the largest divisor of the per-rank batch up to the cap), or ``hyperscale slurm
  --dry-run`` refuses the job up front with one line that names ``train.global_batch_size`` and the fix.
- The README's two-rank torchrun line runs as written (2 CPU ranks) and records the resolved micro-batch in
  RUN/config.yaml; a global batch the ranks cannot share is refused before anything is written; a run under
  both auto settings records them, and its resume on two ranks keeps the stage and chooses the micro-batch again.
- ``deepspeed.zero_stage=auto`` with simulated memory (the GPU's and the host's memory source monkeypatched):
  a small budget takes ZeRO-3 and a large one a replicated stage, each what the memory plan recommends; a
  resume keeps its checkpoint's stage without a plan.
"""
from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hyperscale.cli import main as cli_main
from hyperscale.errors import ConfigError
from hyperscale.training import auto, plan
from hyperscale.training.activations import FakeStepper
from hyperscale.training.config import CONFIG_DIR, load_config
from hyperscale.training.ds_config import DS_CONFIG_DIR, build_ds_config
from hyperscale.training.auto import resolve_auto
from hyperscale.training.geometry import CPU_MICRO_BATCH_CAP, batch_geometry, per_rank_batch
from helpers import REPO, TINY, launch, log_tail, run_env

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
WORLDS = (1, 2, 8, 16, 32)
GiB = 1024**3


def _slurm_shape(world: int) -> tuple[int, int]:
    """(nodes, GPUs per node) for ``world`` ranks, as a cluster would run them."""
    return (1, world) if world <= 8 else (world // 8, 8)


def _slurm_dry_run(capsys, config: Path, world: int) -> tuple[int, str, str]:
    nodes, gpus = _slurm_shape(world)
    code = cli_main(["slurm", str(config), "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--dry-run"])
    out, err = capsys.readouterr()
    return code, out, err


# -------------------------------------------------------------------------------- every config x world
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_has_a_valid_geometry_or_is_refused_up_front(capsys, config: Path, world: int):
    cfg = load_config(config)
    assert cfg.train.micro_batch_size == "auto", f"{config.name}: shipped configs use micro_batch_size: auto"
    g = cfg.train.global_batch_size
    if g % world:
        code, out, err = _slurm_dry_run(capsys, config, world)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (code, out, err)
        assert lines[0].startswith("hyperscale: error: train.global_batch_size="), err
        assert f"multiple of {world}" in err and "cannot be split evenly" in err, err
        with pytest.raises(ConfigError, match=r"^train\.global_batch_size=\d+ cannot be split evenly"):
            resolve_auto(cfg, world, "cpu")
        return
    # the resolution function itself (ZeRO stage given, so that no memory plan is made: see the tests below)
    fixed = cfg if cfg.deepspeed.zero_stage != "auto" else cfg.with_overrides(["deepspeed.zero_stage=3"])
    resolved = resolve_auto(fixed, world, "cpu")
    geo, micro = resolved.geometry, resolved.cfg.train.micro_batch_size
    assert geo.micro_batch_size == micro and isinstance(micro, int)
    assert geo.global_batch_size == g == micro * world * geo.accumulation, geo
    per = g // world
    assert micro == max(d for d in range(1, min(per, CPU_MICRO_BATCH_CAP) + 1) if per % d == 0)
    ds = build_ds_config(resolved.cfg, world)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        g, micro, geo.accumulation)
    code, out, err = _slurm_dry_run(capsys, config, world)
    assert code == 0, err  # (its rank table goes to the stdout bound when hyperscale.cli.slurm was imported)


def test_a_micro_batch_that_does_not_divide_the_per_rank_batch_names_the_fix(capsys):
    cfg = load_config(CONFIG_DIR / "default.yaml", ["train.micro_batch_size=16"])
    assert batch_geometry(cfg, 1).accumulation == 1
    with pytest.raises(ConfigError, match=r"set train\.micro_batch_size=auto, or to a divisor of the 8 examples"):
        batch_geometry(cfg, 2)
    code = cli_main(["slurm", str(CONFIG_DIR / "default.yaml"), "train.micro_batch_size=16", "--nodes", "2",
                     "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and "train.micro_batch_size=auto" in err and len(err.strip().splitlines()) == 1, err


def _slurm_output(*argv: str) -> str:
    import argparse
    import io

    from hyperscale.cli import slurm as slurm_cli

    parser = argparse.ArgumentParser()
    slurm_cli.add_parser(parser.add_subparsers())
    out = io.StringIO()
    assert slurm_cli.run(parser.parse_args(["slurm", *argv, "--dry-run"]), out=out) == 0
    return out.getvalue()


def test_slurm_dry_run_prints_the_batch_geometry():
    text = _slurm_output(str(CONFIG_DIR / "glue-t5-base.yaml"), "--nodes", "2", "--gpus-per-node", "8")
    assert ("batch: global batch 128 = 8 example(s) per rank x 16 rank(s); train.micro_batch_size=auto: the largest "
            "divisor of 8 that fits, chosen at start-up") in text.splitlines()
    text = _slurm_output(str(CONFIG_DIR / "default.yaml"), "train.micro_batch_size=4", "--nodes", "2")
    assert "batch: global batch 16 = micro-batch 4 x 2 accumulation step(s) x 2 rank(s)" in text.splitlines()


def test_split_refusal_names_the_key_and_both_fixes():
    with pytest.raises(ConfigError) as e:
        per_rank_batch(16, 3)
    assert str(e.value) == ("train.global_batch_size=16 cannot be split evenly over 3 ranks: set "
                            "train.global_batch_size to a multiple of 3 (e.g. 15 or 18), or run on a number of ranks "
                            "that divides 16 (e.g. 2 or 4)")
    assert per_rank_batch(128, 32) == 4


# -------------------------------------------------------------------------------- the README's torchrun line
def _readme_torchrun_line() -> str:
    text = (REPO / "README.md").read_text()
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip().startswith("torchrun --standalone --nproc-per-node 2 -m hyperscale.train")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.distributed
def test_readme_torchrun_line_runs_on_two_cpu_ranks(tmp_path: Path):
    words = shlex.split(_readme_torchrun_line())
    run_dir = tmp_path / "run"
    # the line as written; only its output_dir moves into the test's folder
    args = [f"output_dir={run_dir}" if w.startswith("output_dir=") else w for w in words[1:]]
    assert any(w.startswith("output_dir=") for w in words), "the README line names its output_dir"
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    log = tmp_path / "torchrun.log"
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=run_env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, log_tail(log)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg = load_config(REPO / words[words.index("hyperscale.train") + 1])
    micro = saved["train"]["micro_batch_size"]
    assert micro == cfg.train.global_batch_size // 2 and saved["deepspeed"]["zero_stage"] == cfg.deepspeed.zero_stage
    assert (run_dir / "results.json").is_file()
    assert f"train.micro_batch_size=auto -> {micro}" in log.read_text()


@pytest.mark.distributed
def test_a_global_batch_the_ranks_cannot_share_is_refused_before_anything_is_written(tmp_path: Path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "hyperscale.train", str(CONFIG_DIR / "tiny-cpu.yaml"), f"output_dir={run_dir}",
           "train.global_batch_size=7"]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "hyperscale: error:" in ln]
    assert errors and "train.global_batch_size=7 cannot be split evenly over 2 ranks" in errors[0], errors
    assert "multiple of 2 (e.g. 6 or 8)" in errors[0]
    assert not run_dir.exists()


@pytest.mark.distributed
def test_auto_values_are_recorded_and_a_resume_on_another_world_size_chooses_the_micro_batch_again(tmp_path: Path):
    run = tmp_path / "run"
    common = [str(TINY), f"output_dir={run}", "deepspeed.zero_stage=auto"]
    proc = launch(["-m", "hyperscale.train"], [*common, "train.max_steps=4"], 1, tmp_path / "one.log",
                  preloaded=True)
    assert proc.returncode == 0, log_tail(tmp_path / "one.log")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    stage = saved["deepspeed"]["zero_stage"]
    assert saved["train"]["micro_batch_size"] == 8 and stage in (0, 1, 2, 3), saved  # 8 examples on one rank
    text = (tmp_path / "one.log").read_text()
    assert f"deepspeed.zero_stage=auto -> {stage} by the memory plan for " in text
    ckpt = run / "checkpoints" / "step-00000004"
    assert yaml.safe_load((ckpt / "run_config.yaml").read_text())["deepspeed"]["zero_stage"] == stage
    # two ranks now: the stage is the checkpoint's, the micro-batch is chosen for 4 examples per rank
    proc = launch(["-m", "hyperscale.train"], [*common, "train.max_steps=6", "--resume", "auto"], 2,
                  tmp_path / "two.log", preloaded=True)
    assert proc.returncode == 0, log_tail(tmp_path / "two.log")
    text = (tmp_path / "two.log").read_text()
    assert f"deepspeed.zero_stage=auto -> {stage} kept from the checkpoint" in text
    assert "train.micro_batch_size=auto -> 4" in text
    resumed = yaml.safe_load((run / "config.resumed-step-00000004.yaml").read_text())
    assert resumed["train"]["micro_batch_size"] == 4 and resumed["deepspeed"]["zero_stage"] == stage
    assert yaml.safe_load((run / "config.yaml").read_text()) == saved  # the original stays as it was


# -------------------------------------------------------------------------------- zero_stage: auto
@pytest.fixture(scope="module")
def sharding_pays(tmp_path_factory) -> tuple:
    """t5-small on 8 ranks with small DeepSpeed buffers (as tests/training/test_plan.py does), where sharding the
    backbone saves more than ZeRO-3's buffers cost; the memory that fits ZeRO-3 but no replicated stage, and
    one that fits every stage."""
    ds = json.loads((DS_CONFIG_DIR / "zero3_fp32.json").read_text())
    ds["zero_optimization"].update(stage="auto", stage3_max_live_parameters=1_000_000,
                                   stage3_prefetch_bucket_size=100_000)
    path = tmp_path_factory.mktemp("ds") / "ds.json"
    path.write_text(json.dumps(ds))
    cfg = load_config(None, ["model.backbone=preset:t5-small", "data.max_source_length=64", "data.max_target_length=8",
                             "data.tasks=[rte,cb]", "train.precision=fp32", "train.global_batch_size=64",
                             "deepspeed.zero_stage=auto", f"deepspeed.config={path}",
                             "deepspeed.reduce_bucket_size=1000000", "deepspeed.allgather_bucket_size=1000000"])
    stepper = FakeStepper(cfg)
    planner = functools.partial(plan.make_plan, stepper=stepper)  # the fake steps measured once
    roomy = planner(cfg, 8, 1, 80 * GiB)
    at_one = {(s.zero_stage, s.offload): s.per_gpu_bytes["total"] - s.per_gpu_bytes["activations"]
              + stepper.peak(1, False) for s in roomy.stages}
    replicated, sharded = min(at_one[(k, False)] for k in (0, 1, 2)), at_one[(3, False)]
    assert sharded < replicated, (sharded, replicated)
    return cfg, planner, (sharded + replicated) // 2, 80 * GiB


@pytest.mark.parametrize("budget", ["small", "large"])
def test_zero_stage_auto_takes_what_the_plan_recommends_for_the_gpu_memory(sharding_pays, monkeypatch, budget):
    cfg, planner, small, large = sharding_pays
    memory = small if budget == "small" else large
    monkeypatch.setattr(plan, "device_memory", lambda: memory)  # the GPU's memory source
    resolved = resolve_auto(cfg, 8, "cuda", local_ranks=8, make_plan=planner)
    expected = planner(cfg, 8, 1, memory).recommended
    ds = resolved.cfg.deepspeed
    assert (ds.zero_stage, ds.offload) == (expected.zero_stage, expected.offload)
    assert ds.zero_stage == (3 if budget == "small" else 0) and not ds.offload  # fp32: ZeRO-0 first where it fits
    assert resolved.cfg.train.micro_batch_size == expected.micro_batch_size  # on a GPU the plan bounds it
    note = resolved.notes[0]
    assert note.startswith(f"deepspeed.zero_stage=auto -> {ds.zero_stage} by the memory plan for "), note
    assert ("replicated backbone does not fit" if budget == "small" else "fits replicated") in note, note
    assert "\n" not in note


def test_zero_stage_auto_on_cpu_plans_with_the_host_memory_per_rank(sharding_pays, monkeypatch):
    cfg, planner, small, large = sharding_pays
    monkeypatch.setattr(auto, "host_available_memory", lambda: 2 * small)  # shared by 2 ranks on this host
    resolved = resolve_auto(cfg, 8, "cpu", local_ranks=2, make_plan=planner)
    assert resolved.cfg.deepspeed.zero_stage == 3 and "host memory available to each of 2 rank(s)" in resolved.notes[0]
    assert resolved.cfg.train.micro_batch_size == 8  # on CPU: the per-rank batch up to the cap, not the plan's
    monkeypatch.setattr(auto, "host_available_memory", lambda: 2 * large)
    assert resolve_auto(cfg, 8, "cpu", local_ranks=2, make_plan=planner).cfg.deepspeed.zero_stage == 0


def test_zero_stage_auto_on_resume_keeps_the_checkpoint_stage_without_a_plan():
    cfg = load_config(CONFIG_DIR / "flan-t5-xxl.yaml")
    assert cfg.deepspeed.zero_stage == "auto" and cfg.deepspeed.build_sharded

    def no_plan(*args, **kwargs):
        raise AssertionError("a resume under zero_stage=auto keeps its checkpoint's stage: no plan")

    kept = resolve_auto(cfg, 16, "cpu", saved_stage=(3, False), make_plan=no_plan)
    assert kept.cfg.deepspeed.zero_stage == 3 and kept.cfg.deepspeed.build_sharded
    assert re.search(r"zero_stage=auto -> 3 kept from the checkpoint", kept.notes[0])
    kept = resolve_auto(cfg, 4, "cpu", saved_stage=(1, False), make_plan=no_plan)
    assert kept.cfg.deepspeed.zero_stage == 1 and not kept.cfg.deepspeed.build_sharded  # sharded only at ZeRO-3
    assert kept.cfg.train.micro_batch_size == CPU_MICRO_BATCH_CAP  # 128 / 4 ranks = 32 per rank


def test_micro_batch_auto_on_a_gpu_without_a_plan_falls_back_to_the_cap():
    def unknown(*args, **kwargs):
        raise ConfigError("model.backbone 'org/t5': its architecture is unknown offline")

    cfg = load_config(CONFIG_DIR / "glue-t5-base.yaml")
    resolved = resolve_auto(cfg, 2, "cuda", memory=80 * GiB, make_plan=unknown)  # zero_stage 2 given
    assert resolved.cfg.train.micro_batch_size == CPU_MICRO_BATCH_CAP and resolved.geometry.accumulation == 2
    assert resolved.notes[0].startswith("warning: no memory plan for train.micro_batch_size=auto")
    with pytest.raises(ConfigError, match="unknown offline"):  # the stage cannot be chosen without one
        resolve_auto(cfg.with_overrides(["deepspeed.zero_stage=auto"]), 2, "cuda", memory=80 * GiB,
                     make_plan=unknown)


def test_auto_settings_are_validated():
    with pytest.raises(ConfigError, match="deepspeed.offload needs deepspeed.zero_stage=3.*leave deepspeed.offload"):
        load_config(None, ["deepspeed.zero_stage=auto", "deepspeed.offload=true"])
    with pytest.raises(ConfigError, match="train.micro_batch_size must be an integer or auto"):
        load_config(None, ["train.micro_batch_size=most"])
    with pytest.raises(ConfigError, match="zero_stage=auto is resolved by the trainer"):
        build_ds_config(load_config(None, ["deepspeed.zero_stage=auto"]), 1)
