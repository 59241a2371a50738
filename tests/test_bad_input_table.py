"""Bad input, in process: the Python API raises a ``HyperscaleError`` naming the problem; the CLI's subcommands
exit 2 with one ``hyperscale: error:`` line and no traceback; nothing is written where nothing should be.
(The trainer's entry points, launched as processes and as two ranks, are in tests/test_errors.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import TINY
from hyperscale import HyperscaleError, HyperscaleModel, load_config
from hyperscale.cli import main


# ---------------------------------------------------------------------------------------------- run configs
CONFIG_CASES = [
    ("train.lr=.inf", "train.lr must be a finite number"),
    ("train.lr=0", "train.lr must be positive"),
    ("train.adam_beta1=1.5", "adam_beta1 and adam_beta2 must be in [0, 1)"),
    ("train.adam_eps=0", "train.adam_eps must be > 0"),
    ("train.max_skipped_steps=0", "train.max_skipped_steps must be >= 1"),
    ("train.nonfinite=ignore", "train.nonfinite must be abort or skip"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
    ("eval.max_examples=0", "eval.max_examples must be >= 1"),
    ("eval.splits=[]", "eval.splits is empty"),
    ("eval.splits=[train]", "'train' is not validation or test"),
    ("data.n_train=0", "data.n_train must be >= 1"),
    ("data.tasks=[]", "data.tasks is empty"),
    ("data.tasks=[rte,rte]", "data.tasks has duplicates"),
    ("sampler.temperature=0", "sampler.temperature must be > 0"),
    ("sampler.mode=random", "sampler.mode must be same-task or mixed"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage must be 0-3"),
    ("deepspeed.offload=true", "deepspeed.offload needs deepspeed.zero_stage=3"),
    ("train.precision=fp16", "train.allow_fp16=true"),
    ("model.reduction_factor=0", "reduction_factor must be >= 1"),
    ("model.method=lora", "model.method"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be >= 1"),
    ("logging.every_steps=0", "logging.every_steps >= 1"),
    ("trainer.max_steps=3", "trainer"),
]


@pytest.mark.parametrize("override, expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_run_config_values(override: str, expected: str):
    with pytest.raises(HyperscaleError) as info:
        load_config(TINY, [override])
    assert expected in str(info.value)


# ---------------------------------------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def model() -> HyperscaleModel:
    torch.manual_seed(0)
    return HyperscaleModel.from_backbone("preset:t5-tiny", ["rte", "cb"], reduction_factor=8)


API_BUILD_CASES = [
    (dict(tasks="rte"), "tasks must be a list of task names"),
    (dict(tasks=[1, 2]), "tasks must be a list of task names"),
    (dict(tasks=[]), "tasks is empty"),
    (dict(tasks=["rte"], reduction_factor="8"), "reduction_factor must be an integer"),
    (dict(tasks=["rte"], method="lora"), "unknown method 'lora'"),
    (dict(tasks=["rte"], backbone="preset:t5-huge"), "unknown backbone preset"),
    (dict(tasks=["rte"], backbone="/nonexistent/t5"), "does not exist"),
]


@pytest.mark.parametrize("kwargs, expected", API_BUILD_CASES, ids=[str(c[0]) for c in API_BUILD_CASES])
def test_python_api_construction(kwargs: dict, expected: str):
    kwargs = dict(kwargs)
    backbone = kwargs.pop("backbone", "preset:t5-tiny")
    with pytest.raises(HyperscaleError, match=None) as info:
        HyperscaleModel.from_backbone(backbone, **kwargs)
    assert expected in str(info.value)


@pytest.mark.parametrize("task_ids, expected", [
    (1.5, "unknown task id 1.5"), ("nope", "unknown task id 'nope'"), (None, "task_ids is missing"),
    (["rte"], "got 1 task ids for a batch of 2"), (7, "unknown task id 7"), (True, "unknown task id True"),
])
def test_python_api_task_ids(model: HyperscaleModel, task_ids, expected: str):
    ids = torch.randint(2, 100, (2, 5))
    with pytest.raises(HyperscaleError) as info:
        model(ids, torch.ones_like(ids), labels=ids[:, :2], task_ids=task_ids)
    assert expected in str(info.value)


def test_python_api_save_refuses_to_overwrite(model: HyperscaleModel, tmp_path: Path):
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(HyperscaleError, match="already holds a saved model"):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def export_dir(model: HyperscaleModel, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli-bad")
    model.backbone.save_pretrained(str(base / "backbone"))
    m = HyperscaleModel.from_backbone(str(base / "backbone"), ["rte", "cb"], reduction_factor=8)
    m.save_pretrained(base / "export")
    return base / "export"


def _cli_cases(export: Path, tmp: Path) -> list:
    return [
        (["params", "--tasks", "-3"], "--tasks must be at least 1"),
        (["params", "--tasks", "rte,-x"], "are not task names"),
        (["params", "--backbone", "t5-huge"], "neither a preset nor a local model directory"),
        (["slurm", str(TINY), "--cpus-per-task", "0", "--dry-run"], "--cpus-per-task must be >= 1"),
        (["slurm", str(TINY), "train.max_stepz=3", "--dry-run"], "did you mean 'max_steps'"),
        (["slurm", str(TINY), "--time", "soon", "--dry-run"], "is not a SLURM time"),
        (["slurm", str(tmp / "none.yaml"), "--dry-run"], "not found"),
        (["export", str(tmp / "no-run"), str(tmp / "out")], "no complete hyperscale checkpoint"),
        (["predict", str(export), "--task", "mrpc", "sentence1: a sentence2: b"], "unknown task id 'mrpc'"),
        (["predict", str(export), "--task", "nosuch", "x"], "Unknown task 'nosuch'"),
        (["predict", str(tmp / "no-export"), "--task", "rte", "x"], "no-export does not exist"),
        (["eval", str(export), "--tasks", "rte", "--data-dir", str(tmp / "no-data")], "is not a directory"),
        # argument errors: one line naming the subcommand's --help, not argparse's usage block (issue 20)
        (["adapt", str(export), "--tasks", "cb"], "the following arguments are required: --out "
                                                  "(see `hyperscale adapt --help`)"),
        (["sweep"], "the following arguments are required: --out (see `hyperscale sweep --help`)"),
        (["train", "--resume"], "argument --resume: expected one argument (see `hyperscale train --help`)"),
        (["plan", "--gpus-per-node", "x"], "argument --gpus-per-node: invalid"),
        (["eval", str(export), "--nope"], "unrecognized arguments: --nope"),
        (["export"], "the following arguments are required: checkpoint, out (see `hyperscale export --help`)"),
        (["trian"], "invalid choice: 'trian'"),
        ([], "the following arguments are required: command (see `hyperscale --help`)"),
        # clearer messages (issue 20)
        (["eval", str(export), "--tasks", "rte,mrpc"], "--tasks mrpc: not a task of the export"),
        (["eval", str(export), "--tasks", "mrpc"], "(its tasks: rte, cb)"),
        (["adapt", str(tmp / "no-export"), "--tasks", "boolq", "--out", str(tmp / "out")], "no-export does not exist"),
        (["eval", str(tmp / "no-export")], "no-export does not exist"),
    ]


N_CLI = 24


@pytest.mark.parametrize("k", range(N_CLI))
def test_cli_subcommands(export_dir: Path, tmp_path: Path, capsys, k: int):
    argv, expected = _cli_cases(export_dir, tmp_path)[k]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("hyperscale: error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err and "usage:" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_the_cli_table_is_complete(export_dir: Path, tmp_path: Path):
    assert len(_cli_cases(export_dir, tmp_path)) == N_CLI



def test_an_unreachable_hub_is_one_line(monkeypatch):
    """Without HF_HUB_OFFLINE and without network: one reachability check, then the offline alternative."""
    from hyperscale import hub
    from hyperscale.modeling.io import load_backbone

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr("transformers.AutoModelForSeq2SeqLM.from_pretrained",
                        lambda *a, **kw: (_ for _ in ()).throw(OSError("not in the cache")))
    with pytest.raises(HyperscaleError, match="cannot be reached from here; use a local copy"):
        load_backbone("google-t5/t5-small")
