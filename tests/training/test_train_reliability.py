"""Faults and damaged files: no fault loses work, no damaged file is used silently, no checkpoint runs code.

Launches the tiny CPU config (one plain process, ZeRO-0, fp32) against copies of a finished run, plus unit checks
of the rules the launches rely on. One-process runs whose launch is not under test run one after another in one
process (``hyperscale.train.main``, helpers.run_cases): the refusals and the divergence in one, each damaged
checkpoint's refused and falling-back resumes in one."""
from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO, TINY, launch, log_tail, rank_envs, run_cases, wait_until
from hyperscale.cli import main
from hyperscale.errors import CheckpointError
from hyperscale.training import checkpoint as ckpt
from hyperscale.training import rundir
from hyperscale.training.recipe import Recipe
from training_helpers import RESUME_STEP, cut_run

pytestmark = pytest.mark.distributed


@pytest.fixture
def run_copy(runs, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(runs("fp32-z0-1p").dir, dst)
    return dst


def _train_cases(tmp: Path, cases: dict[str, tuple[Path, list[str]]]) -> dict[str, tuple[int, str]]:
    """``python -m hyperscale.train`` of the tiny config at ZeRO-0 for each ``{name: (output_dir, extra args)}``,
    one after another in one process: ``{name: (exit status, output)}``."""
    return run_cases({name: ("hyperscale.train", [str(TINY), f"output_dir={run}", "deepspeed.zero_stage=0", *extra])
                      for name, (run, extra) in cases.items()}, tmp / "cases", timeout=600)


def _files(run: Path) -> list:
    return sorted((p.relative_to(run).as_posix(), p.stat().st_size) for p in run.rglob("*") if p.is_file())


# (override, what the one error line says, refused before any data is read)
OTHER_SAMPLING = [
    ("sampler.temperature=2.0", "sampler.temperature: 10.0 in the checkpoint, 2.0 now", True),
    ("train.global_batch_size=16", "train.global_batch_size: 8 in the checkpoint, 16 now", True),
    ("data.n_train=40", "sampler state was saved with another configuration", False),
]


@pytest.fixture(scope="module")
def refusals(runs, tmp_path_factory) -> dict:
    """The one-process launches that end at a refusal or a divergence, in one process: a diverging run, a second
    run in a directory whose lock this test process holds, and a resume with other sampling settings per
    OTHER_SAMPLING (each on its own copy of a finished run). ``{name: (exit status, output)}``, their output
    dirs (``dirs``) and each copy's files before the resume (``before``)."""
    tmp = tmp_path_factory.mktemp("refusals")
    cases = {"diverged": (tmp / "diverged", ["train.lr=1e6"]), "second": (tmp / "busy", [])}
    before = {}
    for override, _, _ in OTHER_SAMPLING:
        run = tmp / f"other-sampling-{len(before)}"
        shutil.copytree(runs("fp32-z0-1p").dir, run)
        before[override] = _files(run)
        cases[override] = (run, [override, "train.max_steps=14", "--resume", "auto"])
    holder = rundir.lock_run_dir(tmp / "busy")  # this test process plays the first run
    try:
        said = _train_cases(tmp, cases)
    finally:
        holder.close()
    return {"dirs": {name: run for name, (run, _) in cases.items()}, "before": before, **said}


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("hyperscale: error:")]


# -------------------------------------------------------------------------------------- divergence
def test_a_diverging_run_stops_with_its_step_and_saves_nothing(refusals):
    run = refusals["dirs"]["diverged"]
    rc, text = refusals["diverged"]
    assert rc == 2, text[-3000:]
    [line] = _error_lines(text)
    assert "the training loss became nan at step" in line and "lower train.lr" in line
    assert not (run / "checkpoints").exists() and not (run / "export").exists()
    report = json.loads(next(run.glob("diverged-step-*.json")).read_text())
    assert report["last_checkpoint"] is None and report["tasks"] and "grad_norm" in report
    assert "Traceback" not in text


# -------------------------------------------------------------------------------------- one run per dir
def test_a_second_run_in_the_same_output_dir_is_refused(refusals):
    run = refusals["dirs"]["second"]  # its lock was held by this test process while the run started
    rc, text = refusals["second"]
    assert rc == 2, text[-3000:]
    [line] = _error_lines(text)
    assert "is in use by another run (pid" in line and "choose another output_dir" in line
    assert not (run / "train_log.jsonl").exists()


# -------------------------------------------------------------------------------------- damaged checkpoints
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(run_copy: Path, tmp_path: Path):
    latest = run_copy / "checkpoints" / "step-00000012"
    optim = next(latest.glob("*optim_states.pt"), None) or next(latest.glob("*model_states.pt"))
    with optim.open("r+b") as f:  # 4 KiB of garbage in the middle
        f.seek(optim.stat().st_size // 2)
        f.write(b"\x5a" * 4096)
    (run_copy / "results.json").unlink()  # (the resume re-runs step 12's evaluation)
    said = _train_cases(tmp_path, {"explicit": (run_copy, ["--resume", str(latest)]),
                                   "auto": (run_copy, ["--resume", "auto"])})
    rc, text = said["explicit"]
    assert rc == 2 and "is corrupt" in _error_lines(text)[0] and optim.name in _error_lines(text)[0], text[-3000:]
    rc, text = said["auto"]
    assert rc == 0, text[-3000:]
    assert "skipping a checkpoint" in text and "resumed from" in text and "step-00000008 at step 8" in text
    steps = [json.loads(ln)["step"] for ln in (run_copy / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    # the damaged checkpoint was not overwritten: it was moved aside, and a new step 12 written
    assert list((run_copy / "checkpoints").glob("step-00000012.replaced-*"))
    ckpt.verify(run_copy / "checkpoints" / "step-00000012")


def test_a_checkpoint_that_would_run_code_is_refused(run_copy: Path, tmp_path: Path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    latest = run_copy / "checkpoints" / "step-00000012"
    torch.save({"python": Payload()}, latest / "rng" / "rank-0.pt", pickle_module=pickle)
    # a careful attacker also rewrites the digests
    (latest / ckpt.COMPLETE).write_text(json.dumps({"version": 1, "files": ckpt._manifest(latest)}))
    assert main(["export", str(latest), str(tmp_path / "export")]) == 2
    (run_copy / "results.json").unlink()
    said = _train_cases(tmp_path, {"explicit": (run_copy, ["--resume", str(latest)]),
                                   "auto": (run_copy, ["--resume", "auto"])})
    rc, text = said["explicit"]
    assert rc == 2 and "would run code" in _error_lines(text)[0] and "rank-0.pt" in text, text[-3000:]
    # --resume auto does not load it either: it falls back to the previous checkpoint, saying why
    rc, text = said["auto"]
    assert rc == 0 and "skipping a checkpoint" in text and "would run code" in text, text[-3000:]
    assert not marker.exists()


def test_preemption_right_after_a_checkpoint_does_not_save_twice(run_copy: Path):
    r = Recipe.__new__(Recipe)
    r.last_tag, r.state = "step-00000012", type("S", (), {"step": 12})()
    assert r.save() == "step-00000012"  # returns at once: no engine, no files touched


def test_a_full_disk_is_one_clear_line(tmp_path: Path, monkeypatch):
    root = tmp_path / "checkpoints"
    root.mkdir()
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(CheckpointError, match="the disk is full"):
        ckpt._explain_write_failure(root, root / "step-00000004", OSError(errno.ENOSPC, "No space left on device"))


# -------------------------------------------------------------------------------------- damaged exports
def test_a_damaged_export_is_refused(runs, tmp_path: Path, capsys):
    from hyperscale.cli import main

    export = tmp_path / "export"
    shutil.copytree(runs("fp32-z0-1p").dir / "export", export)
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2048:-1024] = b"\x11" * 1024  # garbled values past the header
    weights.write_bytes(bytes(data))
    argv = ["predict", str(export), "--task", "rte", "--mode", "rank", "sentence1: a. sentence2: b."]
    assert main(argv) == 2 and "is corrupt" in capsys.readouterr().err

    shutil.rmtree(export)
    shutil.copytree(runs("fp32-z0-1p").dir / "export", export)
    config = json.loads((export / "hyperscale_config.json").read_text())
    config["tasks"] = list(reversed(config["tasks"]))
    (export / "hyperscale_config.json").write_text(json.dumps(config))
    assert main(argv) == 2 and "task order matters" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- another topology
@pytest.mark.parametrize("stage", [2, 3])
def test_resume_on_another_world_size_goes_through_a_universal_checkpoint(runs, tmp_path: Path, stage: int):
    """A 2-rank ZeRO-2/3 run cut at step 4 and resumed on one rank: DeepSpeed's universal format carries the
    optimizer state over, and the losses are the uninterrupted 2-rank run's (to the cross-world-size tolerance)."""
    reference = runs(f"fp32-z{stage}")
    run = tmp_path / "one-rank"
    cut_run(reference.dir, run, RESUME_STEP)
    log = tmp_path / "one-rank.log"
    proc = launch(["-m", "hyperscale.train"], [str(TINY), f"output_dir={run}", f"deepspeed.zero_stage={stage}",
                                               "--resume", "auto"], 1, log, timeout=240, preloaded=True)
    text = log.read_text()
    assert proc.returncode == 0, log_tail(log)
    assert "resuming through DeepSpeed's universal checkpoint format" in text and f"at step {RESUME_STEP}" in text
    assert (run / "universal" / f"step-{RESUME_STEP:08d}" / "zero").is_dir()
    resumed = {e["step"]: e["loss"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}
    expected = reference.losses()
    assert resumed.keys() == expected.keys()
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5), step


def test_resume_under_another_zero_stage_is_refused_before_the_model_is_built(runs, tmp_path: Path):
    run = tmp_path / "other-stage"
    shutil.copytree(runs("fp32-z2").dir, run)
    log = tmp_path / "stage1.log"
    proc = launch(["-m", "hyperscale.train"], [str(TINY), f"output_dir={run}", "deepspeed.zero_stage=1",
                                               "train.max_steps=14", "--resume", "auto"], 2, log, timeout=180,
                  preloaded=True)
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    [line] = _error_lines(text)
    assert "written under ZeRO-2, this run uses ZeRO-1" in line and "deepspeed.zero_stage=2" in line
    assert "model:" not in text  # refused before data, model and engine were built


# -------------------------------------------------------------------------------------- preemption
def test_preemption_at_a_checkpoint_step_saves_once_and_resumes_exactly(runs, tmp_path: Path):
    """Two ranks started as srun starts them; SIGUSR1 reaches both while every step is a checkpoint step. Both exit
    3 (stopped, not finished: outside SLURM nothing requeues it) after saving that step once; --resume auto then
    reproduces the uninterrupted run's losses."""
    import os
    import signal
    import subprocess
    import sys

    run = tmp_path / "preempted"
    args = [str(TINY), f"output_dir={run}", "checkpoint.every_steps=1", "logging.every_steps=1"]
    logs = [(tmp_path / f"rank{r}.log").open("w") for r in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "hyperscale.train", *args], cwd=REPO, stdout=logs[r],
                              stderr=subprocess.STDOUT, env=env) for r, env in enumerate(rank_envs(2))]
    log_file = run / "train_log.jsonl"
    wait_until(lambda: log_file.is_file() and len(log_file.read_text().splitlines()) >= 3, timeout=240,
               what=f"step 3 in {log_file}")
    for p in procs:
        os.kill(p.pid, signal.SIGUSR1)
    codes = [p.wait(timeout=240) for p in procs]
    for f in logs:
        f.close()
    text = "".join((tmp_path / f"rank{r}.log").read_text() for r in range(2))
    assert codes == [3, 3], text[-4000:]
    assert "preemption signal: saving at step" in text and "continue with --resume auto" in text
    assert "Traceback" not in text
    stopped = int(json.loads(log_file.read_text().splitlines()[-1])["step"])
    assert 3 <= stopped < 12, f"the signal came too late (step {stopped}): the run had finished"
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{stopped:08d}"

    log = tmp_path / "resume.log"
    proc = launch(["-m", "hyperscale.train"], [*args, "--resume", "auto"], 2, log, preloaded=True)
    assert proc.returncode == 0, log_tail(log)
    resumed = {e["step"]: e["loss"] for e in map(json.loads, log_file.read_text().splitlines())}
    reference = runs("fp32-z2").losses()
    assert resumed.keys() == reference.keys()
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step


@pytest.mark.parametrize("override, expected, before_data", OTHER_SAMPLING)
def test_resume_with_other_sampling_is_refused_before_the_model_is_built(refusals, override, expected,
                                                                         before_data):
    """The global batch of every step is a function of the sampler's settings and the task sizes: a resume that
    changes them is refused with one line before the model is built (the settings before any data is read), and
    the run directory is left as it was."""
    run = refusals["dirs"][override]
    rc, text = refusals[override]
    assert rc == 2, text[-3000:]
    [line] = _error_lines(text)
    assert expected in line, line
    assert "model:" not in text
    assert ("data:" not in text) == before_data
    assert _files(run) == refusals["before"][override]
