"""Runs that must be refused: a fresh run into a directory that holds a run (nothing overwritten),
a resume with an incompatible configuration. End to end through the entry points (``hyperscale train`` and
``python -m hyperscale.train`` as ``main(argv)`` calls, one after another in one process: helpers.run_cases;
launched processes and two ranks say the same in tests/test_errors.py), plus in-process checks of the variants."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hyperscale.training.config import ConfigError, load_config
from hyperscale.training.resume import resume_point
from hyperscale.training.rundir import check_output_dir
from helpers import TINY, run_cases

pytestmark = pytest.mark.distributed  # needs a finished run


@pytest.fixture(scope="module")
def existing_run(runs, tmp_path_factory) -> Path:
    """A private copy of a finished 1-process ZeRO-0 run (the tests try to clobber it)."""
    src = runs("fp32-z0-1p").dir
    dst = tmp_path_factory.mktemp("existing") / "run"
    shutil.copytree(src, dst)
    return dst


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")
            if p.is_file() and p.name != ".hyperscale.lock"}  # the lock names the run holding it


@pytest.fixture(scope="module")
def refused(existing_run: Path, tmp_path_factory) -> dict:
    """Both refusals, one after another in one process: a fresh run through the CLI (``hyperscale train``) and a
    resume with other tasks (``python -m hyperscale.train``). ``{name: (exit status, output)}`` and the run's
    snapshot before them (``before``)."""
    before = _snapshot(existing_run)
    said = run_cases({
        "fresh": ("hyperscale.cli", ["train", str(TINY), f"output_dir={existing_run}", "deepspeed.zero_stage=0"]),
        "other-tasks": ("hyperscale.train", [str(TINY), f"output_dir={existing_run}", "deepspeed.zero_stage=0",
                                             "data.tasks=[rte,cb,mrpc]", "--resume", "auto"]),
    }, tmp_path_factory.mktemp("refused"))
    return {"before": before, **said}


def test_fresh_run_into_an_existing_run_is_refused(existing_run: Path, refused):
    rc, text = refused["fresh"]
    assert rc == 2, text[-3000:]
    assert "already holds a run" in text and "--resume auto" in text
    assert "Traceback" not in text
    assert _snapshot(existing_run) == refused["before"]


def test_resume_with_other_tasks_is_refused(existing_run: Path, refused):
    rc, text = refused["other-tasks"]
    assert rc == 2, text[-3000:]
    assert "cannot resume" in text and "data.tasks" in text and "['rte', 'cb']" in text
    assert "['rte', 'cb', 'mrpc']" in text
    assert "Traceback" not in text and "size mismatch" not in text
    assert _snapshot(existing_run) == refused["before"]


# ------------------------------------------------------------------------------- in-process variants
def _resume_point(run_dir: Path, overrides: list[str], resume) -> None:
    """The trainer's resume checks (before data, model and engine are built) for this config and --resume."""
    cfg = load_config(TINY, [f"output_dir={run_dir}", "deepspeed.zero_stage=0", *overrides])
    resume_point(cfg, resume, Path(cfg.output_dir).resolve())


@pytest.mark.parametrize("override, key", [
    ("model.reduction_factor=4", "model.reduction_factor"),
    ("model.method=hyperformer", "model.method"),
    ("model.task_embedding_dim=32", "model.task_embedding_dim"),
    ("data.tasks=[cb,rte]", "data.tasks"),
])
def test_incompatible_resume_names_the_difference(existing_run: Path, override: str, key: str):
    with pytest.raises(ConfigError) as info:
        _resume_point(existing_run, [override], "auto")
    msg = str(info.value)
    assert "cannot resume" in msg and key in msg and "in the checkpoint" in msg


def test_compatible_resume_passes_the_check(existing_run: Path):
    # what does not change the weights may change: dropout, steps, lr, stage, precision
    _resume_point(existing_run, ["model.dropout=0.2", "train.max_steps=20", "train.lr=1e-4",
                                 "deepspeed.zero_stage=2"], "auto")
    _resume_point(existing_run, [], str(existing_run / "checkpoints" / "step-00000008"))


def test_output_dir_checks(existing_run: Path, tmp_path: Path):
    with pytest.raises(FileExistsError, match="already holds a run"):
        check_output_dir(existing_run, None)
    check_output_dir(existing_run, "auto")  # continuing is fine
    check_output_dir(tmp_path / "new", None)  # a new directory is fine
    with pytest.raises(FileNotFoundError, match="no complete hyperscale checkpoint"):
        _resume_point(tmp_path / "new", [], str(tmp_path / "missing"))
