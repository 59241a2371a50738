"""``hyperscale inspect`` (parameter report, task-embedding plots and JSON) and the experiment reporting helpers
of ``hyperscale.experiments.report`` (summaries, Markdown tables, curves)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import T5Config, T5ForConditionalGeneration

from hyperscale.cli import main
from hyperscale.errors import ConfigError
from hyperscale.experiments.report import (
    cosine_similarity_matrix,
    markdown_table,
    plot_curves,
    plot_task_embeddings,
    project_2d,
    require_matplotlib,
    summarize,
)
from hyperscale.modeling.model import HyperscaleModel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ["rte", "cb", "sst2", "cola"]
OUT_FILES = ("task_embeddings.json", "task_embeddings.png", "task_similarity.png")


def _error_lines(err: str) -> list[str]:
    """The ``hyperscale: error:`` lines (transformers' loading progress bars share stderr)."""
    return [ln for ln in err.splitlines() if ln.startswith("hyperscale: error:")]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   relative_attention_num_buckets=8, feed_forward_proj="relu", tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("inspect") / "backbone"
    T5ForConditionalGeneration(cfg).save_pretrained(str(path))
    return path


def _export(backbone_dir: Path, method: str) -> Path:
    torch.manual_seed(1)
    model = HyperscaleModel.from_backbone(str(backbone_dir), TASKS, method=method, reduction_factor=8)
    out = backbone_dir.parent / f"export-{method}"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hyper_export(backbone_dir: Path) -> Path:
    return _export(backbone_dir, "hyperformer++")


@pytest.fixture(scope="module")
def finetune_export(backbone_dir: Path) -> Path:
    return _export(backbone_dir, "finetune")


# ------------------------------------------------------------------------------------------------ inspect
def test_inspect_writes_plots_and_json_then_refuses_to_overwrite(hyper_export: Path, capsys):
    assert main(["inspect", str(hyper_export)]) == 0
    out = capsys.readouterr().out
    assert "hyperformer++" in out and "task embeddings" in out and "trainable (total)" in out
    assert "trainable per task (% of backbone)" in out  # the report of `hyperscale params`

    inspect_dir = hyper_export / "inspect"  # the default --out
    data = json.loads((inspect_dir / "task_embeddings.json").read_text())
    assert data["names"] == TASKS and data["method"] == "hyperformer++"
    cos = torch.tensor(data["cosine_similarity"], dtype=torch.float64)
    assert cos.shape == (4, 4)
    assert torch.equal(cos, cos.T)
    assert torch.allclose(cos.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-12)
    saved = load_file(str(hyper_export / "model.safetensors"))["bank.task_embeddings"]
    expected = torch.nn.functional.cosine_similarity(saved[:, None, :], saved[None, :, :], dim=-1)
    assert torch.allclose(cos.float(), expected, atol=1e-5)
    coords = torch.tensor(data["coords_2d"], dtype=torch.float64)
    assert coords.shape == (4, 2)
    assert torch.allclose(coords, project_2d(saved), atol=1e-9)
    assert _is_png(inspect_dir / "task_embeddings.png") and _is_png(inspect_dir / "task_similarity.png")

    # a second run refuses, one line naming the file and the flag, and changes nothing
    before = {n: (inspect_dir / n).read_bytes() for n in OUT_FILES}
    assert main(["inspect", str(hyper_export)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hyperscale: error:")  # refused before loading
    assert "task_embeddings.json" in err and "--overwrite" in err
    assert {n: (inspect_dir / n).read_bytes() for n in OUT_FILES} == before

    (inspect_dir / "task_similarity.png").write_bytes(b"stale")
    assert main(["inspect", str(hyper_export), "--overwrite"]) == 0
    assert _is_png(inspect_dir / "task_similarity.png")
    assert sorted(p.name for p in inspect_dir.iterdir()) == sorted(OUT_FILES)  # no temporary files left


def test_inspect_without_task_embeddings_writes_nothing(finetune_export: Path, tmp_path: Path, capsys):
    out_dir = tmp_path / "out"
    assert main(["inspect", str(finetune_export), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "T5 (all weights)" in out
    assert "no task embeddings" in out and "Nothing written" in out
    assert not out_dir.exists() and not (finetune_export / "inspect").exists()


def test_inspect_without_matplotlib_writes_the_json(hyper_export: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="pip install"):
        require_matplotlib()
    out_dir = tmp_path / "out"
    assert main(["inspect", str(hyper_export), "--out", str(out_dir)]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "Traceback" not in errors[0]
    err = errors[0]
    assert "matplotlib" in err and "pip install -e '.[plots]'" in err
    assert json.loads((out_dir / "task_embeddings.json").read_text())["names"] == TASKS
    assert not (out_dir / "task_embeddings.png").exists() and not (out_dir / "task_similarity.png").exists()


def test_inspect_of_a_directory_without_a_model(tmp_path: Path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "hyperscale_config.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ report
ROWS = [
    {"method": "hyperformer++", "task": "cb", "metric": "acc", "k": 16, "seed": 0, "score": 70.0},
    {"method": "hyperformer++", "task": "cb", "metric": "acc", "k": 16, "seed": 1, "score": 74.0},
    {"method": "hyperformer++", "task": "cb", "metric": "acc", "k": 16, "seed": 2, "score": 72.0},
    {"method": "hyperformer++", "task": "cb", "metric": "acc", "k": 4, "seed": 0, "score": 60.0},
    {"method": "hyperformer++", "task": "cb", "metric": "acc", "k": 4, "seed": 1, "score": 70.0},
    {"method": "adapters", "task": "cb", "metric": "acc", "k": 16, "seed": 0, "score": 50.0},
]


def test_summarize_groups_and_sorts():
    s = summarize(ROWS, "k")
    # series in the order the rows name them, x in numeric order
    assert [(r["task"], r["metric"], r["series"], r["x"], r["n"]) for r in s] == [
        ("cb", "acc", "hyperformer++", 4, 2), ("cb", "acc", "hyperformer++", 16, 3), ("cb", "acc", "adapters", 16, 1)]
    assert s[2]["mean"] == pytest.approx(50.0) and s[2]["std"] is None  # one run: no spread known
    # (60, 70): mean 65, sample std sqrt(2 * 5^2 / 1) = 7.07...
    assert s[0]["mean"] == pytest.approx(65.0) and s[0]["std"] == pytest.approx(math.sqrt(50.0))
    # (70, 74, 72): mean 72, sample std sqrt((2^2 + 2^2 + 0) / 2) = 2
    assert s[1]["mean"] == pytest.approx(72.0) and s[1]["std"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="'k'"):
        summarize([{"method": "m", "task": "t", "metric": "acc", "score": 1.0}], "k")


def test_markdown_table():
    text = markdown_table(summarize(ROWS, "k"), "k")
    lines = text.strip().splitlines()
    assert lines[0].startswith("Scores in percent on each task's test split")
    assert lines[2] == "## cb: accuracy"
    assert lines[4] == "| method | k | seeds | accuracy |"
    assert lines[6:] == ["| hyperformer++ | 4 | 2 | 65.0 ± 7.1 |", "| hyperformer++ | 16 | 3 | 72.0 ± 2.0 |",
                         "| adapters | 16 | 1 | 50.0 |"]  # one seed: the score alone


def test_plot_curves_writes_a_png(tmp_path: Path):
    rows = ROWS + [dict(r, task="rte", k=r["k"] * 16) for r in ROWS]  # two tasks, x from 4 to 256 (log scale)
    path = plot_curves(summarize(rows, "k"), tmp_path / "plots" / "curves.png", "k (examples per class)",
                       "few-shot transfer")
    assert _is_png(path)
    single = plot_curves(summarize(ROWS, "k"), tmp_path / "one.png", "k", "cb")
    assert _is_png(single)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "plots"]


def test_projection_and_cosine_edge_cases(tmp_path: Path):
    one = torch.randn(1, 8)
    assert torch.equal(project_2d(one), torch.zeros(1, 2, dtype=torch.float64))
    two = torch.randn(2, 8, dtype=torch.float64)
    p = project_2d(two)
    assert torch.equal(p[:, 1], torch.zeros(2, dtype=torch.float64))
    assert abs(p[0, 0] - p[1, 0]) == pytest.approx(float((two[0] - two[1]).norm()))
    assert torch.allclose(cosine_similarity_matrix(two), torch.nn.functional.cosine_similarity(
        two[:, None], two[None], dim=-1))
    assert _is_png(plot_task_embeddings(one, ["only"], tmp_path / "one.png"))
    with pytest.raises(ValueError, match="names"):
        plot_task_embeddings(two, ["a"], tmp_path / "bad.png")
