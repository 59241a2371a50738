"""What a user sees on the console: a loss line per logging window when the progress bar is off (SLURM logs),
evaluation progress per task on stderr with --verbose, the result table's notice that a preset backbone is random,
and a default run short of third-party noise (issue 20: 69 lines before, 33 after)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperscale.data.chance import constant_predictor_scores
from hyperscale.data.loading import load_multitask_splits
from helpers import REPO, TINY, run_env

pytestmark = pytest.mark.distributed


def test_loss_lines_without_a_progress_bar(runs):
    text = runs("fp32-z0-1p").log.read_text()  # tiny-cpu.yaml: logging.progress_bar=false, every 2 steps
    lines = re.findall(r"^\[hyperscale\] step (\d+)/12  loss [\d.]+  lr \S+  [\d.]+ samples/s$", text, re.M)
    assert [int(s) for s in lines] == list(range(2, 13, 2)), text[-2000:]


def test_eval_progress_per_task_with_verbose_and_the_random_backbone_notice(runs, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(runs("fp32-z0-1p").dir, run)
    (run / "results.json").unlink()  # a finished run without results evaluates again
    proc = subprocess.run([sys.executable, "-m", "hyperscale.train", str(TINY), f"output_dir={run}",
                           "deepspeed.zero_stage=0", "--resume", "auto", "--verbose"], cwd=REPO, env=run_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("validation", "test"):
        for task in ("rte", "cb"):
            assert re.search(rf"^\[hyperscale\] eval {split} step 12: {task} \(\d+ examples\) acc ", proc.stderr,
                             re.M), proc.stderr[-2000:]
    assert "model.backbone=preset:t5-tiny is a randomly initialised T5" in proc.stdout
    assert "at chance level" in proc.stdout and "configs/glue-t5-base.yaml" in proc.stdout


# what third-party code printed in the default run before issue 20 (tokenization bars, weight loading/writing bars,
# DeepSpeed's banners): none of it may come back by default
NOISE = ("tokenize ", "Loading weights", "Writing model shards", "built successfully", "Processing zero checkpoint",
         "Reconstructed fp32 state dict", "Loading checkpoint shards", "Setting accelerator to")


def test_the_default_run_prints_what_a_user_needs(tmp_path: Path):
    """``hyperscale train`` with the embedded default (shortened: 4 steps, 8 examples per evaluation), from a cold
    tokenization cache: what trains, progress, the result tables and where things are, in at most 36 lines
    (the full default run printed 69 before issue 20, 33 after)."""
    env = run_env()
    env["HYPERSCALE_CACHE"] = str(tmp_path / "cache")  # cold: tokenization runs, as in a first run
    env.pop("DS_ACCELERATOR")  # as a user runs it: the CLI names the CPU accelerator itself, silently
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "hyperscale.cli", "train", f"output_dir={run}", "train.max_steps=4",
                           "eval.max_examples=8"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=400)
    out = proc.stdout.decode("utf-8", "replace")  # bytes: text mode would turn a progress bar's \r into lines
    assert proc.returncode == 0, out[-3000:]
    lines = out.rstrip("\n").split("\n")  # as a terminal (and wc -l) counts them: a bar's \r updates are one line
    assert len(lines) <= 36, f"{len(lines)} lines:\n{out}"
    assert not [n for n in NOISE if n in out], out
    out = "\n".join(ln.rsplit("\r", 1)[-1] for ln in lines)  # what a terminal shows of each line
    assert re.search(r"^\[hyperscale\] model: hyperformer\+\+ on .*: [\d,]+ trainable parameters", out, re.M), out
    assert re.search(r"^\[hyperscale\] distributed env \(single\): rank 0/1", out, re.M), out  # launch.py's line
    for split in ("validation", "test"):
        assert re.search(rf"^\[hyperscale\] eval {split} step 4: 6 tasks, 48 examples", out, re.M), out
        assert f"{split} (step 4):" in out
    for where in ("checkpoint:", "tensorboard:", "export:"):
        assert re.search(rf"^ *{where} {re.escape(str(run))}", out, re.M), out
    # beside every score, the best constant answer's on the same 8 examples: recorded, and shown in brackets
    results = json.loads((run / "results.json").read_text())
    test = load_multitask_splits(["rte", "stsb"], None)  # the default's data: the shipped sample, default split
    for task in ("rte", "stsb"):
        chance = constant_predictor_scores(task, test[task]["test"]["target"][:8])
        assert results["test"]["chance"][task] == {m: ref["score"] for m, ref in chance.items()}, task
    rte, rte_chance = results["test"]["tasks"]["rte"]["acc"], results["test"]["chance"]["rte"]["acc"]
    table = out[out.index("test (step 4):"):]
    assert f"  rte        acc {rte:6.2f} ({rte_chance:.2f})" in table, table
