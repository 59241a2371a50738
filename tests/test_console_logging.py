"""One rank-aware logger for the package: the entry points show ``[hyperscale] ...`` lines from rank 0 (every rank's,
with its rank, at DEBUG), and nothing of it outlives the call; called from Python, the records go to the caller's
own logging configuration."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperscale.cli import main
from hyperscale.errors import console_logging, debug_logging, run_main
from hyperscale.launch import setup_distributed_env
from hyperscale.training.config import load_config
from hyperscale.training.ds_config import build_ds_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny-cpu.yaml"
log = logging.getLogger("hyperscale.tests")


def _logging_state() -> tuple:
    pkg, root = logging.getLogger("hyperscale"), logging.getLogger()
    return list(pkg.handlers), pkg.level, pkg.propagate, list(pkg.filters), list(root.handlers), root.level


@pytest.fixture
def rank1(monkeypatch):
    monkeypatch.setenv("RANK", "1")  # no process group here: the launcher's rank is this process's rank
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("HYPERSCALE_DEBUG", raising=False)


def test_a_record_from_rank_1_is_dropped_at_info_and_shown_with_its_rank_at_debug(rank1, monkeypatch, capsys):
    with console_logging():
        log.info("from rank one")
        log.warning("a warning from rank one")
    assert capsys.readouterr() == ("", "")
    with console_logging(), debug_logging():
        log.info("from rank one")
    assert capsys.readouterr().out == "[hyperscale rank 1] from rank one\n"
    monkeypatch.setenv("HYPERSCALE_DEBUG", "1")  # the debug setting of an entry point does the same
    with console_logging():
        log.debug("detail from rank one")
    assert capsys.readouterr().out == "[hyperscale rank 1] detail from rank one\n"


def test_rank_0_shows_info_on_stdout_and_warnings_on_stderr_without_a_rank(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("HYPERSCALE_DEBUG", raising=False)
    with console_logging():
        log.debug("not shown at INFO")
        log.info("step 2/12")
        log.info("eval progress", extra={"stderr": True})
        log.warning("careful")
        with console_logging():  # nested entry points: still one line per record
            log.info("once")
    out, err = capsys.readouterr()
    assert out == "[hyperscale] step 2/12\n[hyperscale] once\n"
    assert err == "[hyperscale] eval progress\n[hyperscale] careful\n"


def test_the_cli_called_from_python_leaves_logging_as_it_was(capsys):
    before = _logging_state()
    assert main(["params", "--backbone", "t5-tiny", "--tasks", "2"]) == 0
    assert main(["params", "--tasks", "0"]) == 2  # an error on the way out restores it too
    assert _logging_state() == before
    with debug_logging():
        pass
    assert _logging_state() == before
    capsys.readouterr()


def test_the_entry_points_show_launchs_info_lines(monkeypatch, capsys):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "HYPERSCALE_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    setup_distributed_env({})  # from Python: standard logging, nothing on the console
    assert "distributed env" not in capsys.readouterr().out
    assert run_main(lambda: setup_distributed_env({}) and 0) == 0  # what every entry point runs in
    assert "[hyperscale] distributed env (single): rank 0/1, local rank 0/1, master 127.0.0.1:" in \
        capsys.readouterr().out


@pytest.mark.distributed  # trains (one plain process, 2 steps)
def test_the_python_api_changes_no_logging_state_and_its_records_reach_the_callers_logging(tmp_path: Path):
    code = f"""
import logging
import hyperscale.train as T

kept = []
class Keep(logging.Handler):
    def emit(self, record):
        kept.append(record)

root = logging.getLogger()
root.addHandler(Keep())
root.setLevel(logging.INFO)
pkg = logging.getLogger("hyperscale")
state = lambda: (list(pkg.handlers), pkg.level, pkg.propagate, list(pkg.filters), list(root.handlers), root.level)
before = state()
T.run(T.build_arg_parser().parse_args([{str(TINY)!r}, "output_dir={tmp_path / 'run'}", "train.max_steps=2",
                                       "eval.max_examples=4", "deepspeed.zero_stage=0", "--verbose"]))
assert state() == before, (before, state())
names = {{r.name for r in kept if r.name.startswith("hyperscale")}}
messages = [r.getMessage() for r in kept if r.name.startswith("hyperscale")]
assert "hyperscale.launch" in names, names
assert any(m.startswith("model: ") for m in messages), messages
assert any(m.startswith("eval test step 2: ") for m in messages), messages
print("API-OK")
"""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HYPERSCALE_DEBUG"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "API-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "[hyperscale]" not in proc.stdout + proc.stderr  # the package installed no console output of its own


def test_zero0_bf16_accumulation_warns_through_the_package_logger(caplog):
    """ds_config's one warning is a record of the package logger (shown by the entry points), not a Python
    warning."""
    cfg = load_config(None, ["deepspeed.zero_stage=0", "train.precision=bf16", "train.global_batch_size=8",
                             "train.micro_batch_size=2"])
    with caplog.at_level(logging.WARNING, logger="hyperscale"):
        build_ds_config(cfg, 1)
    warned = [r for r in caplog.records if r.name == "hyperscale.training.ds_config"]
    assert len(warned) == 1 and "accumulates gradients in bf16 over 4 micro-batches" in warned[0].getMessage()
