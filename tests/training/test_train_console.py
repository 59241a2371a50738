"""What a user sees on the console: a loss line per logging window when the progress bar is off (SLURM logs),
evaluation progress per task on stderr, and the result table's notice that a preset backbone is random."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import REPO, TINY, run_env

pytestmark = pytest.mark.distributed


def test_loss_lines_without_a_progress_bar(runs):
    text = runs("fp32-z0-1p").log.read_text()  # tiny-cpu.yaml: logging.progress_bar=false, every 2 steps
    lines = re.findall(r"^\[hyperscale\] step (\d+)/12  loss [\d.]+  lr \S+  [\d.]+ samples/s$", text, re.M)
    assert [int(s) for s in lines] == list(range(2, 13, 2)), text[-2000:]


def test_eval_progress_on_stderr_and_the_random_backbone_notice(runs, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(runs("fp32-z0-1p").dir, run)
    (run / "results.json").unlink()  # a finished run without results evaluates again
    proc = subprocess.run([sys.executable, "-m", "hyperscale.train", str(TINY), f"output_dir={run}",
                           "deepspeed.zero_stage=0", "--resume", "auto"], cwd=REPO, env=run_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("validation", "test"):
        for task in ("rte", "cb"):
            assert re.search(rf"^\[hyperscale\] eval {split} step 12: {task} \(\d+ examples\) acc ", proc.stderr,
                             re.M), proc.stderr[-2000:]
    assert "model.backbone=preset:t5-tiny is a randomly initialised T5" in proc.stdout
    assert "at chance level" in proc.stdout and "configs/glue-t5-base.yaml" in proc.stdout
