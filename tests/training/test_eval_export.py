"""``hyperscale eval`` of a run's export reproduces the trainer's own test scores (``RUN/results.json``), every
metric of every task, exactly: the export's ``export.json`` records what the trainer evaluated with (split seed,
n_test, source length, STS-B grid, mode, batch size, precision) and eval uses it. Two real short runs, one plain
process each: the tiny CPU config with settings the old fixed defaults did not match (split seed 7, 48 source
tokens, 16 test examples, STS-B generation on a 0.1 grid) and the embedded default (configs/default.yaml: bf16,
rank classification, validation and test). Plus the device, dtype and bad-input handling of eval and predict.
Both runs train one after another in one process (helpers.run_cases); eval and predict run in this process
(``hyperscale.cli.main``, their output caught at the file descriptors): what they say, not a launch, is tested."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import REPO, TINY, run_cases
from hyperscale.cli import main

pytestmark = pytest.mark.distributed  # launches DeepSpeed training runs (one plain process each)

RUNS = {
    "tiny": [str(TINY), "train.max_steps=4", "data.tasks=[rte,cb,stsb]", "data.max_source_length=48",
             "data.split_seed=7", "data.stsb_grid=0.1"],
    "default": [str(REPO / "configs" / "default.yaml"), "train.max_steps=4", "logging.progress_bar=false"],
}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("eval_export")
    out = {name: base / name for name in RUNS}
    said = run_cases({name: ("hyperscale.train", [*args, f"output_dir={out[name]}"]) for name, args in RUNS.items()},
                     base / "logs")
    for name, (rc, text) in said.items():
        assert rc == 0, f"{name}: exit {rc}\n{text[-3000:]}"
    return out


def _cli(capfd: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """``hyperscale ARGS`` in this process: exit status, stdout and stderr as a launch would give them, on one
    thread as a launched process has (helpers.run_env: OMP_NUM_THREADS=1), so that scores compare exactly."""
    threads = torch.get_num_threads()
    capfd.readouterr()
    torch.set_num_threads(1)
    try:
        rc = main(list(args))
    finally:
        torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["hyperscale", *args], rc, out, err)


@pytest.mark.parametrize("name", list(RUNS))
def test_eval_of_the_export_equals_the_runs_test_scores(runs, capfd, name):
    run = runs[name]
    trained = json.loads((run / "results.json").read_text())["test"]
    info = json.loads((run / "export" / "export.json").read_text())
    proc = _cli(capfd, "eval", str(run / "export"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads(proc.stdout)["test"]
    assert evaluated["tasks"] == trained["tasks"]  # every metric of every task, exactly
    assert evaluated["average"] == trained["average"]
    assert evaluated["step"] == trained["step"] == info["step"] == 4
    assert "note:" not in proc.stderr  # nothing fell back to a default


def test_export_json_records_the_runs_evaluation_settings(runs):
    tiny = json.loads((runs["tiny"] / "export" / "export.json").read_text())["evaluation"]
    assert {k: tiny[k] for k in ("tasks", "split_seed", "max_source_length", "max_target_length", "n_val", "n_test",
                                 "stsb_grid", "data_dir", "mode", "batch_size", "precision")} == {
        "tasks": ["rte", "cb", "stsb"], "split_seed": 7, "max_source_length": 48, "max_target_length": 8,
        "n_val": 16, "n_test": 16, "stsb_grid": 0.1, "data_dir": "sample", "mode": "rank", "batch_size": 16,
        "precision": "fp32"}
    # what `hyperscale train` runs with no arguments: rank classification in bf16, validation and test
    default = json.loads((runs["default"] / "export" / "export.json").read_text())["evaluation"]
    assert (default["mode"], default["precision"], default["splits"]) == ("rank", "bf16", ["validation", "test"])


def test_the_table_names_the_exports_step(runs, capfd):
    proc = _cli(capfd, "eval", str(runs["tiny"] / "export"), "--tasks", "rte", "--n", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test (step 4):" in proc.stdout and "step export" not in proc.stdout


@NO_CUDA
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_device_cuda_without_cuda_is_one_line_and_exit_2(runs, capfd, command):
    extra = ["--task", "rte", "sentence1: a sentence2: b"] if command == "predict" else []
    proc = _cli(capfd, command, str(runs["tiny"] / "export"), "--device", "cuda", *extra)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyperscale: error: --device cuda"), proc.stderr
    assert "no CUDA device" in lines[0] and "--device cpu" in lines[0]


@pytest.mark.parametrize("flags, says", [(["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
                                         (["--n", "-1"], "--n must be at least 1"),
                                         (["--n", "0"], "--n must be at least 1")])
def test_bad_sizes_are_one_line_and_exit_2(runs, capsys, flags, says):
    assert main(["eval", str(runs["tiny"] / "export"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hyperscale: error: " + says), err


@NO_CUDA
def test_load_export_auto_is_the_cpu_in_fp32(runs):
    from hyperscale.errors import ConfigError
    from hyperscale.training.export import load_export

    export = runs["default"] / "export"  # a bf16 run: the Python API's default is still fp32 on the CPU
    model, _ = load_export(export, device="auto")
    assert not model.training
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.float32)}
    model, _ = load_export(export, dtype="bf16")  # the whole model, adapters' bank included
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.bfloat16)}
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        load_export(export, device="cuda:0")
