"""The ``hyperscale`` command: ``predict`` and ``eval`` work from an export alone (no DeepSpeed, no
training config, no run directory), and ``--help`` lists the subcommands."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

SUBCOMMANDS = ("train", "eval", "export", "predict", "params")
RTE_INPUTS = ["sentence1: A man is playing a guitar on stage. sentence2: A person plays an instrument.",
              "sentence1: The cat slept all day. sentence2: The dog barked at the mailman."]

# run the CLI with DeepSpeed made unimportable: the export path must not need it
NO_DEEPSPEED = ("import sys; sys.modules['deepspeed'] = None; "
                "from hyperscale.cli import main; sys.exit(main(sys.argv[1:]))")


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """An export as `hyperscale export` writes it (HyperscaleModel.save_pretrained + tokenizer), of a
    HyperFormer++ model on a tiny T5 saved to disk; built without DeepSpeed or a training run."""
    import torch

    from hyperscale.data.tokenization import default_tokenizer
    from hyperscale.modeling.model import HyperscaleModel, load_backbone

    base = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    backbone, _ = load_backbone("preset:t5-tiny")
    backbone.save_pretrained(str(base / "backbone"))
    model = HyperscaleModel.from_backbone(str(base / "backbone"), ["rte", "cb"], method="hyperformer++",
                                          reduction_factor=8)
    out = base / "export"
    model.save_pretrained(out)
    default_tokenizer().save_pretrained(str(out / "tokenizer"))
    assert not (out / "run_config.yaml").exists()
    return out


def test_predict_from_an_export_without_deepspeed(export_dir: Path):
    """Rank classification in a process where DeepSpeed cannot be imported: always a label of the task."""
    proc = subprocess.run([sys.executable, "-c", NO_DEEPSPEED, "predict", str(export_dir), "--task", "rte",
                           "--mode", "rank", *RTE_INPUTS], cwd=export_dir.parent, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(RTE_INPUTS), proc.stdout
    for line, text in zip(lines, RTE_INPUTS):
        label, name, echoed = line.split("\t")
        assert label in ("0", "1") and name in ("entailment", "not_entailment") and echoed == text


def test_predict_generate(export_dir: Path, capsys):
    from hyperscale.cli import main

    assert main(["predict", str(export_dir), "--task", "rte", *RTE_INPUTS]) == 0  # generation is the default
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == len(RTE_INPUTS)
    assert all(line.endswith(text) for line, text in zip(lines, RTE_INPUTS))


def test_predict_rejects_an_unknown_task(export_dir: Path, capsys):
    from hyperscale.cli import main

    assert main(["predict", str(export_dir), "--task", "mrpc", RTE_INPUTS[0]]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_eval_from_an_export(export_dir: Path, capsys):
    from hyperscale.cli import main

    assert main(["eval", str(export_dir), "--tasks", "rte", "--n", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    acc = result["test"]["tasks"]["rte"]["acc"]
    assert 0.0 <= acc <= 100.0 and (acc * 8 / 100).is_integer()  # 8 examples
    assert result["test"]["average"]["mean_all_metrics"] == acc
    assert main(["eval", str(export_dir), "--tasks", "rte", "--n", "8", "--split", "validation"]) == 0
    table = capsys.readouterr().out
    assert "validation" in table and "rte" in table and "acc" in table


def _help_command() -> list[str]:
    exe = shutil.which("hyperscale")
    return [exe] if exe else [sys.executable, "-m", "hyperscale.cli"]


def test_help_lists_the_subcommands():
    proc = subprocess.run([*_help_command(), "--help"], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sub in SUBCOMMANDS:
        assert sub in proc.stdout, f"{sub} missing from:\n{proc.stdout}"


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help(sub: str, capsys):
    from hyperscale.cli import main

    with pytest.raises(SystemExit) as info:
        main([sub, "--help"])
    assert info.value.code == 0
    assert "usage: hyperscale" in capsys.readouterr().out


def test_predict_flags_a_regression_output_that_is_not_a_number(export_dir: Path, monkeypatch, capsys):
    """stsb predictions the model did not write as numbers are shown raw and flagged, never as an empty column."""
    import torch

    from hyperscale.cli import main, predict

    monkeypatch.setattr(predict, "predict_for_task", lambda *a, **kw: ["", "3.4"])
    monkeypatch.setattr(predict, "load_export", lambda path, backbone, **kw: (type("M", (), {
        "bank": None, "config": type("C", (), {"method": "hyperformer++"})(),
        "parameters": lambda self: iter([torch.zeros(1)])})(), None))
    assert main(["predict", str(export_dir), "--task", "stsb", "sentence1: a sentence2: b",
                 "sentence1: c sentence2: d"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("''\t(not a number") and out[1].startswith("3.4\t")
