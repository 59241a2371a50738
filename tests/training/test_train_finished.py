"""A finished run resumed again (``--resume auto``: what every requeue of a finished SLURM job does) says
it is complete, prints its results, makes sure its export exists and exits 0, changing nothing; a larger
``train.max_steps`` on resume extends it with a continuous learning rate (engine.continue_schedule).

Each test has its own copy of one finished run; the three resumes run one after another in one process
(``hyperscale train`` and ``python -m hyperscale.train`` as ``main(argv)`` calls, helpers.run_cases)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import TINY, run_cases

pytestmark = pytest.mark.distributed


def _args(run: Path, *extra: str) -> list[str]:
    return [str(TINY), f"output_dir={run}", "deepspeed.zero_stage=0", *extra, "--resume", "auto"]


def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".hyperscale.lock"}


def _lrs(run: Path) -> dict[int, float]:
    return {e["step"]: e["lr"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def resumed(runs, tmp_path_factory) -> dict:
    """Three copies of a finished run, each resumed with --resume auto, in one process: ``again`` as it is (through
    ``hyperscale train``), ``export`` after its export was removed, ``extend`` with train.max_steps=16.
    ``{name: (exit status, output)}``, the copies (``dirs``), ``again``'s files and ``extend``'s rates before."""
    base = tmp_path_factory.mktemp("finished")
    dirs = {name: base / name for name in ("again", "export", "extend")}
    for d in dirs.values():
        shutil.copytree(runs("fp32-z0-1p").dir, d)
    shutil.rmtree(dirs["export"] / "export")
    before = {"files": _files(dirs["again"]), "lr": _lrs(dirs["extend"])}
    said = run_cases({"again": ("hyperscale.cli", ["train", *_args(dirs["again"])]),
                      "export": ("hyperscale.train", _args(dirs["export"])),
                      "extend": ("hyperscale.train", _args(dirs["extend"], "train.max_steps=16"))}, base / "logs")
    return {"dirs": dirs, "before": before, **said}


def test_resuming_a_finished_run_reports_it_and_changes_nothing(resumed):
    finished = resumed["dirs"]["again"]
    rc, text = resumed["again"]
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text
    assert "the run is complete" in text and "step-00000012" in text
    assert "test (step 12):" in text and "average" in text  # the results table, from results.json
    assert f"export: {finished / 'export'}" in text
    assert _files(finished) == resumed["before"]["files"]  # nothing written, nothing replaced


def test_a_finished_run_without_its_export_gets_it_back(resumed):
    finished = resumed["dirs"]["export"]  # its export was removed before the resume
    rc, text = resumed["export"]
    assert rc == 0, text[-3000:]
    assert (finished / "export" / "model.safetensors").is_file()
    assert json.loads((finished / "export" / "export.json").read_text())["step"] == 12


def test_a_larger_max_steps_extends_the_run_with_a_continuous_lr(resumed):
    finished = resumed["dirs"]["extend"]
    lr_before = resumed["before"]["lr"]
    rc, text = resumed["extend"]
    assert rc == 0, text[-3000:]
    assert "train.max_steps 12 -> 16" in text
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
