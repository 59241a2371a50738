"""``hyperscale adapt`` (few-shot transfer) and ``hyperscale sweep`` (low-resource), on the shipped sample.

A HyperFormer++ and a finetune model are trained on rte and mrpc (tiny CPU config, 3 steps) and exported; then
cb is added by few-shot transfer. Each run of the grid is a real (short) training run launched as a user would.
The one-process commands run one after another in one process (``hyperscale.cli.main(argv)``, see
helpers.run_cases: one start-up of torch and DeepSpeed instead of one per command); the two-rank ones are real
torchrun launches.
The reports (tables that name every metric beside a constant predictor's score, ± only over 2+ seeds; plots) are
also checked on made-up rows, without training.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, launch, run_cases
from hyperscale.experiments import grid, report, sweep
from hyperscale.data.chance import constant_predictor_scores
from hyperscale.modeling.io import read_config

pytestmark = pytest.mark.distributed
FAST = ["deepspeed.zero_stage=0", "train.max_steps=3", "train.warmup_steps=1", "eval.max_examples=8",
        "checkpoint.every_steps=0"]


def _cli_cases(cases: dict[str, list[str]], workdir: Path) -> dict[str, tuple[int, str]]:
    """``hyperscale ARGS`` for each case, one after another in one process: ``{name: (exit status, output)}``."""
    return run_cases({name: ("hyperscale.cli", args) for name, args in cases.items()}, workdir)


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict:
    """Every one-process command of this module but the rerun (which must follow the checks of the first adapt
    run), in order in one process: the two source models, the adapt grid, a refused adapt, an adapt that also
    trains hypernetwork and norms, and a sweep run twice. ``{name: (exit status, output)}`` plus the paths."""
    root = tmp_path_factory.mktemp("experiments")
    sources = {method: root / method / "export" for method in ("hyperformer++", "finetune")}
    paths = {"root": root, "sources": sources, "adapt": root / "adapt" / "exp", "refused": root / "refused",
             "hypernet": root / "hypernet", "sweep": root / "sweep"}
    sweep_args = ["sweep", str(TINY), "--methods", "hyperformer++,adapters", "--n-train", "8,16", "--seeds", "1",
                  "--out", str(paths["sweep"]), "data.tasks=[mrpc,cb]", *FAST]
    cases = {f"train-{method}": ["train", str(TINY), f"output_dir={root / method}", f"model.method={method}",
                                 "data.tasks=[rte,mrpc]", *FAST] for method in sources}
    cases.update({
        "adapt": ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4,8", "--seeds", "2",
                  "--train", "embedding", "--baseline", str(sources["finetune"]), "--out", str(paths["adapt"]),
                  "--config", str(TINY), "--keep-exports", *FAST],
        "refused": ["adapt", str(sources["hyperformer++"]), "--tasks", "rte", "--out", str(paths["refused"])],
        "hypernet": ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4", "--seeds", "1",
                     "--train", "embedding+hypernet+norms", "--init", "rte", "--out", str(paths["hypernet"]),
                     "--config", str(TINY), "--keep-checkpoints", "--keep-exports", *FAST],
        "sweep": sweep_args,
        "sweep-again": sweep_args,
    })
    return {"paths": paths, **_cli_cases(cases, root / "logs")}


@pytest.fixture(scope="module")
def sources(commands) -> dict[str, Path]:
    """Exports of multi-task models trained on rte and mrpc: HyperFormer++ and the finetune baseline."""
    for method in ("hyperformer++", "finetune"):
        rc, text = commands[f"train-{method}"]
        assert rc == 0, text[-3000:]
    return commands["paths"]["sources"]


@pytest.fixture(scope="module")
def adapted(sources, commands) -> tuple[Path, str]:
    rc, text = commands["adapt"]
    assert rc == 0, text[-3000:]
    return commands["paths"]["adapt"], text


CELLS = [f"{m}/cb/k{k}/seed{s}" for m in ("hyperformer++_embedding", "finetune") for k in (4, 8) for s in (0, 1)]


def _weights(export: Path) -> dict[str, torch.Tensor]:
    return load_file(str(export / "model.safetensors"))


def test_adapt_adds_the_task_and_trains_only_its_embedding(sources, adapted):
    out, _ = adapted
    before = _weights(sources["hyperformer++"])
    for seed in (0, 1):
        export = out / "hyperformer++_embedding" / "cb" / "k8" / f"seed{seed}" / "export"
        assert read_config(export).tasks == ["rte", "mrpc", "cb"]
        after = _weights(export)
        assert set(after) == set(before)
        for name, value in before.items():
            if name != "bank.task_embeddings":  # hypernetwork and T5 layer norms: bit-identical
                assert torch.equal(after[name], value), name
        emb = after["bank.task_embeddings"]
        assert torch.equal(emb[:2], before["bank.task_embeddings"])  # the trained tasks' embeddings are untouched
        init = before["bank.task_embeddings"].mean(0)  # transfer.new_task_init=mean
        assert not torch.allclose(emb[2], init)  # the new one learned
    # the frozen backbone is the source's (its hash is checked when the export loads)
    assert read_config(export).backbone_hash == read_config(sources["hyperformer++"]).backbone_hash


def test_the_baseline_fine_tunes_every_weight(sources, adapted):
    out, _ = adapted
    before = _weights(sources["finetune"])
    after = _weights(out / "finetune" / "cb" / "k8" / "seed0" / "export")
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) > len(before) // 2


def test_every_method_trains_on_the_same_k_examples_per_seed(adapted):
    out, _ = adapted

    def ids(method: str, k: int, seed: int, split: str = "train") -> str:
        protocol = json.loads((out / method / "cb" / f"k{k}" / f"seed{seed}" / "data_protocol.json").read_text())
        return protocol["tasks"]["cb"]["ids_sha256"][split]

    for k in (4, 8):
        for seed in (0, 1):  # the finetune inputs carry a task prefix: the rows (ids) are the same
            assert ids("hyperformer++_embedding", k, seed) == ids("finetune", k, seed)
        assert ids("finetune", k, 0) != ids("finetune", k, 1)  # another seed, other examples
        assert ids("finetune", k, 0, "test") == ids("finetune", k, 1, "test")  # ... and the same test rows


def test_adapt_writes_table_plot_and_json(adapted):
    out, text = adapted
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 2 * 2 * 2  # methods x k x seeds, one task
    summary = {(s["series"], s["x"]): s for s in data["summary"]}
    assert set(summary) == {(m, k) for m in ("hyperformer++ (embedding)", "finetune") for k in (4, 8)}
    assert all(s["n"] == 2 for s in summary.values())
    assert {r["metric"] for r in data["rows"]} == {"acc"} and all("score" in r for r in data["rows"])
    chance = data["chance"]["cb"]  # a constant answer on the same test rows: cb's majority class
    assert chance["split"] == "test" and chance["examples"] == 8 and chance["scores"]["acc"]["predicts"] in "012"
    table = (out / "results.md").read_text()
    assert "## cb: accuracy (test split, 8 examples)" in table
    assert "| method | k | seeds | accuracy |" in table
    assert "| *constant predictor (chance)* | – | – |" in table
    assert "| finetune | 4 | 2 | " in table and "±" in table
    assert (out / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "experiment" in text and "4 finished" not in text


def test_adapt_prints_one_line_per_cell_and_keeps_each_cells_log(adapted):
    out, text = adapted
    for k, name in enumerate(CELLS, 1):
        lines = [ln for ln in text.splitlines() if name in ln]
        assert len(lines) == 1 and lines[0].startswith(f"cell {k}/8 {name}: cb accuracy "), lines
        log = (out / name / "cell.log").read_text()  # the run's own output, there and not on the console
        assert len(log.splitlines()) >= 3
    assert "saved checkpoint" not in text and "train:" not in text and "Processing zero checkpoint" not in text
    table = text[text.index("test scores in percent"):].splitlines()
    assert table[1].split() == ["task", "metric", "chance", "method", "k=4", "k=8"]
    assert [ln.split()[3] for ln in table[2:4]] == ["hyperformer++", "finetune"] and table[4].strip().startswith("json:")


def test_a_finished_cell_keeps_results_and_export_but_not_checkpoints(adapted):
    out, _ = adapted
    for name in CELLS:
        cell = out / name
        assert (cell / "results.json").is_file() and (cell / "config.yaml").is_file()
        assert (cell / "export" / "model.safetensors").is_file()  # --keep-exports
        assert not (cell / "checkpoints").exists() and not (cell / "tokenizer").exists()


def test_a_rerun_skips_finished_cells_and_runs_only_new_ones(sources, adapted, tmp_path):
    out, _ = adapted
    first = (out / "finetune" / "cb" / "k4" / "seed0" / "results.json").stat().st_mtime_ns
    said = _cli_cases({
        "rerun": ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4,8", "--seeds", "3",
                  "--train", "embedding", "--baseline", str(sources["finetune"]), "--out", str(out),
                  "--config", str(TINY), *FAST],
        "other": ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4", "--seeds", "1",
                  "--train", "embedding", "--init", "random", "--out", str(out), "--config", str(TINY), *FAST],
    }, tmp_path)
    rc, text = said["rerun"]
    assert rc == 0, text[-3000:]
    assert "12 cells, 8 finished, 4 to run" in text
    assert sum(ln.startswith("cell ") for ln in text.splitlines()) == 4
    assert (out / "finetune" / "cb" / "k4" / "seed0" / "results.json").stat().st_mtime_ns == first
    assert all(s["n"] == 3 for s in json.loads((out / "results.json").read_text())["summary"])
    # other fixed settings in the same directory: refused, nothing run
    rc, text = said["other"]
    assert rc == 2 and "holds another experiment (" in text and "init: 'mean' there, 'random' now" in text, text[-2000:]


def test_adapt_refuses_a_task_the_export_already_has(sources, commands):
    rc, text = commands["refused"]
    assert rc == 2 and "rte: already a task of" in text
    assert not commands["paths"]["refused"].exists()


def test_adapt_with_hypernet_and_norms_keeps_the_frozen_backbone_and_old_tasks(sources, commands):
    out = commands["paths"]["hypernet"]
    rc, text = commands["hypernet"]
    assert rc == 0, text[-3000:]
    before = _weights(sources["hyperformer++"])
    cell = out / "hyperformer++_embedding+hypernet+norms" / "cb" / "k4" / "seed0"
    assert (cell / "checkpoints" / "step-00000003").is_dir()  # --keep-checkpoints
    export = cell / "export"
    after = _weights(export)
    changed = {n for n in before if n != "bank.task_embeddings" and not torch.equal(before[n], after[n])}
    assert any(n.startswith("bank.stacks") for n in changed) and any("layer_norm" in n for n in changed)
    assert torch.equal(after["bank.task_embeddings"][:2], before["bank.task_embeddings"])
    assert read_config(export).backbone_hash == read_config(sources["hyperformer++"]).backbone_hash


def test_sweep_writes_table_and_plot_and_skips_finished_cells(commands):
    out = commands["paths"]["sweep"]
    rc, text = commands["sweep"]
    assert rc == 0, text[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["n_train"], r["task"], r["metric"]) for r in data["rows"]} == {
        (m, n, t, metric) for m in ("hyperformer++", "adapters") for n in (8, 16)
        for t, metric in (("mrpc", "f1"), ("mrpc", "acc"), ("cb", "acc"), ("average", "mean"))}
    for cell in {r["dir"] for r in data["rows"]}:
        rows = {(r["task"], r["metric"]): r["score"] for r in data["rows"] if r["dir"] == cell}
        mrpc = (rows[("mrpc", "f1")] + rows[("mrpc", "acc")]) / 2  # the average: tasks' means, mrpc's F1 and acc
        assert rows[("average", "mean")] == pytest.approx((mrpc + rows[("cb", "acc")]) / 2)
        protocol = json.loads((out / cell / "data_protocol.json").read_text())
        assert protocol["tasks"]["mrpc"]["sizes"]["train"] == int(cell.split("/n")[1].split("/")[0])
        # finished: results and logs stay, checkpoints and export go (neither flag given)
        assert (out / cell / "results.json").is_file() and (out / cell / "cell.log").is_file()
        assert not (out / cell / "checkpoints").exists() and not (out / cell / "export").exists()
    assert set(data["chance"]) == {"mrpc", "cb", "average"}
    table = (out / "results.md").read_text()
    assert "## mrpc: F1, accuracy (test split, 8 examples)" in table  # a column per metric, each named
    assert "| method | n | seeds | F1 | accuracy |" in table
    assert "## average: mean score" in table and "| adapters | 16 | 1 | " in table
    assert "±" not in table.split("## mrpc")[1]  # one seed: no spread shown anywhere
    assert (out / "low_resource.png").read_bytes()[:4] == b"\x89PNG"
    assert [ln for ln in text.splitlines() if ln.startswith("cell ")] == [
        ln for ln in text.splitlines() if "/seed0" in ln]  # one line per cell, nothing else names a cell
    assert sum(ln.startswith("cell ") for ln in text.splitlines()) == 4
    rc, text = commands["sweep-again"]  # the same command again, after the checks above held for the first run
    assert rc == 0 and "4 cells, 4 finished, 0 to run" in text


def test_reports_without_matplotlib_keep_the_table_and_say_how_to_get_plots(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rows = [{"method": "m", "k": 4, "seed": s, "task": "cb", "metric": "acc", "score": v, "dir": f"c{s}"}
            for s, v in enumerate((50.0, 60.0))]
    with caplog.at_level(logging.INFO, logger="hyperscale"):  # the entry points show the package logger's records
        paths = grid.write_reports(tmp_path, rows, "k", "k", "t", "p.png")
    assert set(paths) == {"console", "json", "markdown"} and not (tmp_path / "p.png").exists()
    assert "55.0 ± 7.1" in (tmp_path / "results.md").read_text() and "55.0 ± 7.1" in paths["console"]
    assert any("no plot:" in r.getMessage() and "pip install -e '.[plots]'" in r.getMessage() for r in caplog.records)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_adapt_under_two_ranks_in_bf16_keeps_held_weights_bit_identical(sources, tmp_path):
    """The grid's runs are ordinary distributed runs (here torchrun, 2 ranks, ZeRO-2, bf16): DeepSpeed's fp32
    masters are set from the export's exact weights, so bf16 does not round the weights held fixed."""
    out = tmp_path / "exp"
    log = tmp_path / "log"
    proc = launch(["-m", "hyperscale.cli"], ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "8",
                                             "--seeds", "1", "--train", "embedding", "--out", str(out),
                                             "--config", str(TINY), "--keep-exports", "train.max_steps=3",
                                             "train.micro_batch_size=4",
                                             "train.precision=bf16", "deepspeed.zero_stage=2", "eval.max_examples=8"],
                  2, log)
    assert proc.returncode == 0, log.read_text()[-3000:]
    before = _weights(sources["hyperformer++"])
    after = _weights(out / "hyperformer++_embedding" / "cb" / "k8" / "seed0" / "export")
    assert [n for n in before if n != "bank.task_embeddings" and not torch.equal(before[n], after[n])] == []
    assert torch.equal(after["bank.task_embeddings"][:2], before["bank.task_embeddings"])
    assert not torch.equal(after["bank.task_embeddings"][2], before["bank.task_embeddings"].mean(0))
    cell = out / "hyperformer++_embedding" / "cb" / "k8" / "seed0"  # each rank's output in its own log
    assert (cell / "cell.log").is_file() and (cell / "cell.rank1.log").is_file()
    assert not (cell / "checkpoints").exists()  # both ranks' shards, removed once every rank was done


def test_a_grid_that_does_not_fit_the_ranks_is_refused_before_any_run(sources, tmp_path):
    out = tmp_path / "exp"
    log = tmp_path / "log"
    proc = launch(["-m", "hyperscale.cli"], ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "8",
                                             "--seeds", "1", "--train", "embedding", "--out", str(out),
                                             "--config", str(TINY), "train.micro_batch_size=8"], 2, log)
    text = log.read_text()
    assert proc.returncode != 0 and "not divisible by micro_batch_size x world size = 8 x 2" in text, text[-3000:]
    assert "cell 1/1" not in text and not out.exists()  # nothing written



# ------------------------------------------------------------------------------------------------ reports, no training
def _rows(method: str, x: int, seeds: int, scores: dict) -> list[dict]:
    """Made-up result rows: ``scores`` is ``{(task, metric): [score per seed]}`` (one entry per seed)."""
    return [{"method": method, "n_train": x, "seed": s, "task": task, "metric": metric, "score": values[s],
             "dir": f"{method}/n{x}/seed{s}"} for s in range(seeds) for (task, metric), values in scores.items()]


CHANCE = {"mrpc": {"split": "test", "examples": 408,
                   "scores": {"f1": {"score": 81.2, "predicts": "1", "label": "equivalent"},
                              "acc": {"score": 68.4, "predicts": "1", "label": "equivalent"}}},
          "stsb": {"split": "test", "examples": 100,
                   "scores": {"pearson": {"score": 0.0, "predicts": None}, "spearman": {"score": 0.0, "predicts": None}}},
          "cola": {"split": "test", "examples": 100, "scores": {"mcc": {"score": 0.0, "predicts": "0"}}}}


def test_the_table_names_every_metric_in_its_own_column_beside_chance():
    rows = (_rows("hyperformer++", 100, 2, {("mrpc", "f1"): [81.2, 81.2], ("mrpc", "acc"): [68.4, 68.4],
                                            ("stsb", "pearson"): [12.0, 14.0], ("stsb", "spearman"): [10.0, 11.0],
                                            ("cola", "mcc"): [0.0, 0.0]})
            + _rows("adapters", 100, 2, {("mrpc", "f1"): [84.0, 86.0], ("mrpc", "acc"): [75.0, 77.0],
                                         ("stsb", "pearson"): [0.0, 0.0], ("stsb", "spearman"): [0.0, 0.0],
                                         ("cola", "mcc"): [5.0, 7.0]}))
    table = report.markdown_table(report.summarize(rows, "n_train"), "n", chance=CHANCE)
    lines = table.splitlines()
    assert "## mrpc: F1, accuracy (test split, 408 examples)" in lines
    assert "| method | n | seeds | F1 | accuracy |" in lines  # not mrpc's unlabelled mean of the two
    assert '| *constant predictor (chance)* | – | – | 81.2 ("1" = equivalent) | 68.4 ("1" = equivalent) |' in lines
    # what a constant predictor reaches is marked (mrpc's F1 of 81.2 is always answering "1"); above it is not
    assert "| hyperformer++ | 100 | 2 | 81.2 ± 0.0 † | 68.4 ± 0.0 † |" in lines
    assert "| adapters | 100 | 2 | 85.0 ± 1.4 | 76.0 ± 1.4 |" in lines
    assert "## stsb: Pearson, Spearman (test split, 100 examples)" in lines
    assert "| method | n | seeds | Pearson | Spearman |" in lines
    assert "| adapters | 100 | 2 | 0.0 ± 0.0 † | 0.0 ± 0.0 † |" in lines  # a correlation of 0.0: noted
    assert "| hyperformer++ | 100 | 2 | 0.0 ± 0.0 † |" in lines  # cola's MCC 0.0
    assert "| adapters | 100 | 2 | 6.0 ± 1.4 |" in lines
    assert "a 0.0 there most likely means the model gave every example the same answer" in lines[0]
    assert "† marks a score a constant predictor reaches" in lines[0]
    console = report.console_table(report.summarize(rows, "n_train"), "n", chance=CHANCE).splitlines()
    assert console[1].split() == ["task", "metric", "chance", "method", "n=100"]
    assert console[2].split() == ["mrpc", "F1", "81.2", "hyperformer++", "81.2", "±", "0.0", "†"]
    assert console[3].split() == ["mrpc", "F1", "81.2", "adapters", "85.0", "±", "1.4"]


def test_plus_minus_only_with_two_or_more_seeds():
    rows = (_rows("hyperformer++", 100, 1, {("rte", "acc"): [55.0]})
            + _rows("hyperformer++", 200, 3, {("rte", "acc"): [50.0, 60.0, 70.0]}))
    summary = report.summarize(rows, "n_train")
    assert [(r["x"], r["n"], r["std"]) for r in summary] == [(100, 1, None), (200, 3, pytest.approx(10.0))]
    lines = report.markdown_table(summary, "n").splitlines()
    assert "| hyperformer++ | 100 | 1 | 55.0 |" in lines  # one seed: its score and n = 1, no "± 0.0"
    assert "| hyperformer++ | 200 | 3 | 60.0 ± 10.0 |" in lines
    assert "± 0.0" not in "\n".join(lines)


def test_the_constant_predictor_scores_what_a_model_that_ignores_its_input_reaches():
    mrpc = constant_predictor_scores("mrpc", ["1"] * 68 + ["0"] * 32)
    assert mrpc["acc"] == {"score": pytest.approx(68.0), "predicts": "1", "label": "equivalent"}
    assert mrpc["f1"]["score"] == pytest.approx(100 * 2 * 68 / (2 * 68 + 32))  # always "1": 80.95
    assert constant_predictor_scores("cola", ["1", "0", "1"])["mcc"] == {"score": 0.0, "predicts": None,
                                                                         "label": None}  # any answer: MCC 0
    stsb = constant_predictor_scores("stsb", ["1.2", "3.4", "0.4"])
    assert stsb["pearson"]["score"] == stsb["spearman"]["score"] == 0.0 and stsb["pearson"]["predicts"] is None
    assert constant_predictor_scores("cb", ["0", "2", "2", "1"])["acc"]["score"] == 50.0
    assert report.at_chance(81.24, 81.2) and report.at_chance(50.0, 53.6) and not report.at_chance(81.3, 81.2)


def test_the_sweeps_average_counts_each_task_once_and_has_a_chance_too():
    rows = _rows("adapters", 100, 1, {("mrpc", "f1"): [80.0], ("mrpc", "acc"): [70.0], ("cola", "mcc"): [10.0]})
    avg = [r for r in sweep.with_average(rows) if r["task"] == "average"]
    assert len(avg) == 1 and avg[0]["metric"] == "mean" and avg[0]["score"] == pytest.approx((75.0 + 10.0) / 2)
    chance = sweep.with_average_chance({t: CHANCE[t] for t in ("mrpc", "cola")})
    assert chance["average"]["scores"]["mean"]["score"] == pytest.approx(((81.2 + 68.4) / 2 + 0.0) / 2)


def test_the_plot_has_a_panel_per_task_and_metric_with_sane_axes(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    seen = {}
    real_save = report._save_figure

    def keep(plt, fig, path, dpi=150):
        seen["axes"] = [ax for ax in fig.axes if ax.get_visible()]
        seen["legends"] = list(fig.legends)
        return real_save(plt, fig, path, dpi)

    monkeypatch.setattr(report, "_save_figure", keep)
    rows = (_rows("hyperformer++", 100, 1, {("mrpc", "f1"): [81.2], ("mrpc", "acc"): [68.4], ("cola", "mcc"): [0.0]})
            + _rows("adapters", 100, 1, {("mrpc", "f1"): [81.2], ("mrpc", "acc"): [68.4], ("cola", "mcc"): [0.0]})
            + _rows("hyperformer++", 200, 1, {("mrpc", "f1"): [82.0], ("mrpc", "acc"): [70.0], ("cola", "mcc"): [0.0]})
            + _rows("adapters", 200, 1, {("mrpc", "f1"): [82.0], ("mrpc", "acc"): [70.0], ("cola", "mcc"): [0.0]}))
    path = report.plot_curves(report.summarize(rows, "n_train"), tmp_path / "p.png", "n", "Low-resource sweep",
                              chance=CHANCE)
    assert path.read_bytes()[:4] == b"\x89PNG"
    axes = seen["axes"]
    assert [ax.get_title() for ax in axes] == ["mrpc: F1 (test, 408 examples)", "mrpc: accuracy (test, 408 examples)",
                                               "cola: MCC (test, 100 examples)"]
    lo, hi = axes[2].get_ylim()
    assert hi - lo >= report.MIN_Y_SPAN and lo < 0.0 < hi  # cola's flat 0.0: not a ±0.04 axis
    assert all(0.0 <= ax.get_ylim()[0] and ax.get_ylim()[1] <= 100.0 for ax in axes[:2])  # F1, accuracy: 0..100
    for ax in axes:  # equal values do not hide a series: other markers, and x moved apart
        lines = [ln for ln in ax.get_lines() if ln.get_label() in ("hyperformer++", "adapters")]
        assert len(lines) == 2 and lines[0].get_marker() != lines[1].get_marker()
        assert all(a != b for a, b in zip(lines[0].get_xdata(), lines[1].get_xdata()))
    assert len(seen["legends"]) == 1 and not any(ax.get_legend() for ax in axes)  # one legend, below the panels
    labels = [t.get_text() for t in seen["legends"][0].get_texts()]
    assert labels == ["hyperformer++", "adapters", "constant predictor (chance)"]


def test_eval_table_names_split_step_metrics_and_chance():
    from hyperscale.cli.eval import format_table

    per_task = {"mrpc": {"f1": 81.66, "acc": 75.0}, "cola": {"mcc": 0.0}}
    chance = {"mrpc": constant_predictor_scores("mrpc", ["1"] * 69 + ["0"] * 31),
              "cola": constant_predictor_scores("cola", ["1", "0"] * 50)}
    lines = format_table("out/", "test", 200, per_task, chance, {"mrpc": 100, "cola": 100}).splitlines()
    assert lines[0].startswith("test (step 200): out/; scores in percent; chance: the best constant answer")
    assert lines[2].split() == ["mrpc", "100", "F1", "81.66", "81.66", "†"]  # always "1" reaches it
    assert lines[3].split() == ["accuracy", "75.00", "69.00"]  # above the majority class: no mark
    assert lines[4].split() == ["cola", "100", "MCC", "0.00", "0.00", "†"]
    assert lines[-1].startswith("  †: a constant predictor reaches this score")
    unknown = format_table("dir/", "validation", None, per_task, chance, {"mrpc": 100, "cola": 100})
    assert unknown.startswith("validation (step unknown: the export records none): dir/")
