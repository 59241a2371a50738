"""A finished run resumed again (``--resume auto``: what every requeue of a finished SLURM job does) says
it is complete, prints its results, makes sure its export exists and exits 0, changing nothing; a larger
``train.max_steps`` on resume extends it with a continuous learning rate (engine.continue_schedule)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import TINY, launch, log_tail

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def finished(runs, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(runs("fp32-z0-1p").dir, dst)
    return dst


def _args(run: Path, *extra: str) -> list[str]:
    return [str(TINY), f"output_dir={run}", "deepspeed.zero_stage=0", *extra, "--resume", "auto"]


def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".hyperscale.lock"}


def test_resuming_a_finished_run_reports_it_and_changes_nothing(finished: Path, tmp_path: Path):
    before = _files(finished)
    log = tmp_path / "again.log"
    proc = launch(["-m", "hyperscale.cli"], ["train", *_args(finished)], 1, log, timeout=180)
    text = log.read_text()
    assert proc.returncode == 0, log_tail(log)
    assert "Traceback" not in text
    assert "the run is complete" in text and "step-00000012" in text
    assert "test (step 12):" in text and "average" in text  # the results table, from results.json
    assert f"export: {finished / 'export'}" in text
    assert _files(finished) == before  # nothing written, nothing replaced


def test_a_finished_run_without_its_export_gets_it_back(finished: Path, tmp_path: Path):
    shutil.rmtree(finished / "export")
    log = tmp_path / "export.log"
    proc = launch(["-m", "hyperscale.train"], _args(finished), 1, log, timeout=180)
    assert proc.returncode == 0, log_tail(log)
    assert (finished / "export" / "model.safetensors").is_file()
    assert json.loads((finished / "export" / "export.json").read_text())["step"] == 12


def test_a_larger_max_steps_extends_the_run_with_a_continuous_lr(finished: Path, tmp_path: Path):
    lr_before = {e["step"]: e["lr"] for e in map(json.loads, (finished / "train_log.jsonl").read_text().splitlines())}
    log = tmp_path / "extend.log"
    proc = launch(["-m", "hyperscale.train"], _args(finished, "train.max_steps=16"), 1, log, timeout=240)
    assert proc.returncode == 0, log_tail(log)
    assert "train.max_steps 12 -> 16" in log.read_text()
    entries = [json.loads(ln) for ln in (finished / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries] == list(range(1, 17))
    lr = {e["step"]: e["lr"] for e in entries}
    assert all(lr[s] == lr_before[s] for s in range(1, 13))
    # after the resume the rate decays on from step 12's, linearly, to 0 one step after the new end (as the
    # original schedule reached 0 one step after step 12); it never jumps back up
    tail = [lr[s] for s in range(12, 17)]
    diffs = [b - a for a, b in zip(tail, tail[1:])]
    assert all(d < 0 for d in diffs) and diffs == pytest.approx([diffs[0]] * 4, rel=1e-9)
    assert tail[-1] + diffs[0] == pytest.approx(0.0, abs=1e-12)
    # the earlier results stay under their step; the extension's export goes next to the first one
    assert json.loads((finished / "results.json").read_text())["test"]["step"] == 16
    assert (finished / "results.step-12.json").is_file()
    assert json.loads((finished / "export-step-00000016" / "export.json").read_text())["step"] == 16
