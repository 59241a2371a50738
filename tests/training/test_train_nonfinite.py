"""``train.nonfinite``: a non-finite loss or gradient stops the run (abort) or leaves the step out (skip).

NaN losses are injected at chosen steps (and ranks) by ``nan_driver.py``; the runs are the tiny CPU config for
6 steps with a checkpoint every 2, so that the weights before and after the left-out steps can be compared."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY, launch

pytestmark = pytest.mark.distributed
NAN_DRIVER = Path(__file__).resolve().parent / "nan_driver.py"


def _run(run: Path, nproc: int, stage: int, nan: str, *extra: str, preloaded: bool = True) -> tuple[int, str]:
    """The NaN-injecting driver (forked preloaded, tests/preloaded.py; ``preloaded=False``: torchrun for 2 ranks)."""
    log = run.parent / f"{run.name}.log"
    proc = launch([str(NAN_DRIVER)], [*nan.split(), str(TINY), f"output_dir={run}", f"deepspeed.zero_stage={stage}",
                                      "train.max_steps=6", "checkpoint.every_steps=2", "eval.max_examples=4", *extra],
                  nproc, log, preloaded=preloaded)
    return proc.returncode, log.read_text()


def _log(run: Path) -> dict[int, dict]:
    return {e["step"]: e for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    """The module's weights as DeepSpeed saved them at ``step`` (fp32 run: exactly the trained values)."""
    path = run / "checkpoints" / f"step-{step:08d}" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("hyperscale: error:")]


@pytest.mark.parametrize("stage,nproc,nan_ranks", [(0, 1, None), (2, 2, "1")],
                         ids=["zero0-own-check", "zero2-deepspeed-overflow-one-rank"])
def test_skip_leaves_the_step_out_and_training_goes_on(tmp_path: Path, stage: int, nproc: int, nan_ranks):
    run = tmp_path / "run"
    nan = "--nan-steps 3,4" + (f" --nan-ranks {nan_ranks}" if nan_ranks else "")
    rc, text = _run(run, nproc, stage, nan, "train.nonfinite=skip")
    assert rc == 0, text[-4000:]
    log = _log(run)
    assert [s for s, e in log.items() if e.get("skipped")] == [3, 4]
    assert log[3]["loss"] is None and log[4]["loss"] is None  # NaN is not JSON: logged as null
    assert all(isinstance(log[s]["loss"], float) for s in (1, 2, 5, 6))
    assert "step 3: non-finite loss or gradients; the step was left out (1 in a row" in text
    # the left-out steps changed nothing: the weights at step 4 are those of step 2, bit for bit; step 6 moved on
    w2, w4, w6 = (_weights(run, s) for s in (2, 4, 6))
    trainable = [k for k in w2 if w2[k].is_floating_point()]
    assert trainable and all(torch.equal(w2[k], w4[k]) for k in trainable)
    assert any(not torch.equal(w4[k], w6[k]) for k in trainable)
    assert all(torch.isfinite(w6[k]).all() for k in trainable)
    assert (run / "export" / "model.safetensors").is_file()
    state = json.loads((run / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 2 and state["skipped_in_a_row"] == 0


def test_skip_stops_after_max_skipped_steps_in_a_row(tmp_path: Path):
    run = tmp_path / "run"
    rc, text = _run(run, 1, 0, "--nan-steps 3,4,5,6", "train.nonfinite=skip", "train.max_skipped_steps=3")
    assert rc == 2, text[-4000:]
    [line] = _errors(text)
    assert "3 optimizer steps in a row (up to step 5)" in line and "train.max_skipped_steps=3" in line
    report = json.loads((run / "diverged-step-00000005.json").read_text())
    assert report["nonfinite_policy"] == "skip" and report["skipped_in_a_row"] == 3
    assert report["last_checkpoint"] == "step-00000004"
    assert not (run / "export").exists() and "Traceback" not in text


def test_abort_stops_every_rank_when_one_rank_meets_a_nan(tmp_path: Path):
    run = tmp_path / "run"
    rc, text = _run(run, 2, 2, "--nan-steps 3 --nan-ranks 1", preloaded=False)  # as torchrun ends it
    # torchrun exits 1 when a rank fails; the rank that reports exits 2 (the error handler's status)
    assert rc != 0 and "exitcode  : 2" in text, text[-4000:]
    [line] = _errors(text)  # rank 0 reports, once
    assert "the training loss became nan at step 3" in line and "train.nonfinite=skip" in line
    report = json.loads((run / "diverged-step-00000003.json").read_text())
    assert report["nonfinite_policy"] == "abort" and report["last_checkpoint"] == "step-00000002"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002"]
    assert not (run / "export").exists()
    assert not [ln for ln in text.splitlines() if ln.startswith("[rank") and "Traceback" in ln]  # torchrun's own is
