"""``hyperscale adapt`` (few-shot transfer) and ``hyperscale sweep`` (low-resource), on the shipped sample.

A HyperFormer++ and a finetune model are trained on rte and mrpc (tiny CPU config, 12 steps) and exported; then
cb is added by few-shot transfer. Each run of the grid is a real (short) training run launched as a user would.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hyperscale.experiments import grid
from hyperscale.modeling.io import read_config
from training_helpers import TINY, launch

pytestmark = pytest.mark.distributed
FAST = ["deepspeed.zero_stage=0", "train.max_steps=3", "train.warmup_steps=1", "eval.max_examples=8",
        "checkpoint.every_steps=0"]


def _cli(args: list[str], log: Path) -> tuple[int, str]:
    proc = launch(["-m", "hyperscale.cli"], args, 1, log)
    return proc.returncode, log.read_text()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Exports of multi-task models trained on rte and mrpc: HyperFormer++ and the finetune baseline."""
    root = tmp_path_factory.mktemp("sources")
    out = {}
    for method in ("hyperformer++", "finetune"):
        run = root / method
        rc, text = _cli(["train", str(TINY), f"output_dir={run}", f"model.method={method}", "data.tasks=[rte,mrpc]",
                         *FAST], root / f"{method}.log")
        assert rc == 0, text[-3000:]
        out[method] = run / "export"
    return out


@pytest.fixture(scope="module")
def adapted(sources, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("adapt") / "exp"
    rc, text = _cli(["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4,8", "--seeds", "2",
                     "--train", "embedding", "--baseline", str(sources["finetune"]), "--out", str(out),
                     "--config", str(TINY), *FAST], out.parent / "adapt.log")
    assert rc == 0, text[-3000:]
    return out, text


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
    table = (out / "results.md").read_text()
    assert "| cb | finetune |" in table and "±" in table
    assert (out / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "experiment" in text and "4 finished" not in text


def test_a_rerun_skips_finished_cells_and_runs_only_new_ones(sources, adapted, tmp_path):
    out, _ = adapted
    first = (out / "finetune" / "cb" / "k4" / "seed0" / "results.json").stat().st_mtime_ns
    rc, text = _cli(["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4,8", "--seeds", "3",
                     "--train", "embedding", "--baseline", str(sources["finetune"]), "--out", str(out),
                     "--config", str(TINY), *FAST], tmp_path / "rerun.log")
    assert rc == 0, text[-3000:]
    assert "12 cells, 8 finished, 4 to run" in text
    assert (out / "finetune" / "cb" / "k4" / "seed0" / "results.json").stat().st_mtime_ns == first
    assert all(s["n"] == 3 for s in json.loads((out / "results.json").read_text())["summary"])
    # other fixed settings in the same directory: refused, nothing run
    rc, text = _cli(["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4", "--seeds", "1",
                     "--train", "embedding", "--init", "random", "--out", str(out), "--config", str(TINY), *FAST],
                    tmp_path / "other.log")
    assert rc == 2 and "holds another experiment (" in text and "init: 'mean' there, 'random' now" in text, text[-2000:]


def test_adapt_refuses_a_task_the_export_already_has(sources, tmp_path):
    rc, text = _cli(["adapt", str(sources["hyperformer++"]), "--tasks", "rte", "--out", str(tmp_path / "x")],
                    tmp_path / "log")
    assert rc == 2 and "rte: already a task of" in text
    assert not (tmp_path / "x").exists()


def test_adapt_with_hypernet_and_norms_keeps_the_frozen_backbone_and_old_tasks(sources, tmp_path):
    out = tmp_path / "exp"
    rc, text = _cli(["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "4", "--seeds", "1",
                     "--train", "embedding+hypernet+norms", "--init", "rte", "--out", str(out),
                     "--config", str(TINY), *FAST], tmp_path / "log")
    assert rc == 0, text[-3000:]
    before = _weights(sources["hyperformer++"])
    export = out / "hyperformer++_embedding+hypernet+norms" / "cb" / "k4" / "seed0" / "export"
    after = _weights(export)
    changed = {n for n in before if n != "bank.task_embeddings" and not torch.equal(before[n], after[n])}
    assert any(n.startswith("bank.stacks") for n in changed) and any("layer_norm" in n for n in changed)
    assert torch.equal(after["bank.task_embeddings"][:2], before["bank.task_embeddings"])
    assert read_config(export).backbone_hash == read_config(sources["hyperformer++"]).backbone_hash


def test_sweep_writes_table_and_plot_and_skips_finished_cells(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", str(TINY), "--methods", "hyperformer++,adapters", "--n-train", "8,16", "--seeds", "1",
            "--out", str(out), "data.tasks=[rte,cb]", *FAST]
    rc, text = _cli(args, tmp_path / "sweep.log")
    assert rc == 0, text[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["n_train"], r["task"]) for r in data["rows"]} == {
        (m, n, t) for m in ("hyperformer++", "adapters") for n in (8, 16) for t in ("rte", "cb", "average")}
    for cell in {r["dir"] for r in data["rows"]}:
        rows = [r for r in data["rows"] if r["dir"] == cell]
        avg = next(r["metric"] for r in rows if r["task"] == "average")
        assert avg == pytest.approx(sum(r["metric"] for r in rows if r["task"] != "average") / 2)
        protocol = json.loads((out / cell / "data_protocol.json").read_text())
        assert protocol["tasks"]["rte"]["sizes"]["train"] == int(cell.split("/n")[1].split("/")[0])
    assert "| average | adapters |" in (out / "results.md").read_text()
    assert (out / "low_resource.png").read_bytes()[:4] == b"\x89PNG"
    rc, text = _cli(args, tmp_path / "again.log")
    assert rc == 0 and "4 cells, 4 finished, 0 to run" in text


def test_reports_without_matplotlib_keep_the_table_and_say_how_to_get_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rows = [{"method": "m", "k": 4, "seed": s, "task": "cb", "metric": v, "dir": f"c{s}"}
            for s, v in enumerate((50.0, 60.0))]
    paths = grid.write_reports(tmp_path, rows, "k", "k", "t", "p.png")
    assert set(paths) == {"json", "markdown"} and not (tmp_path / "p.png").exists()
    assert "55.0 ± 7.1" in (tmp_path / "results.md").read_text()
    assert "pip install -e '.[plots]'" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_adapt_under_two_ranks_in_bf16_keeps_held_weights_bit_identical(sources, tmp_path):
    """The grid's runs are ordinary distributed runs (here torchrun, 2 ranks, ZeRO-2, bf16): DeepSpeed's fp32
    masters are set from the export's exact weights, so bf16 does not round the weights held fixed."""
    out = tmp_path / "exp"
    log = tmp_path / "log"
    proc = launch(["-m", "hyperscale.cli"], ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "8",
                                             "--seeds", "1", "--train", "embedding", "--out", str(out),
                                             "--config", str(TINY), "train.max_steps=3", "train.micro_batch_size=4",
                                             "train.precision=bf16", "deepspeed.zero_stage=2", "eval.max_examples=8"],
                  2, log)
    assert proc.returncode == 0, log.read_text()[-3000:]
    before = _weights(sources["hyperformer++"])
    after = _weights(out / "hyperformer++_embedding" / "cb" / "k8" / "seed0" / "export")
    assert [n for n in before if n != "bank.task_embeddings" and not torch.equal(before[n], after[n])] == []
    assert torch.equal(after["bank.task_embeddings"][:2], before["bank.task_embeddings"])
    assert not torch.equal(after["bank.task_embeddings"][2], before["bank.task_embeddings"].mean(0))


def test_a_grid_that_does_not_fit_the_ranks_is_refused_before_any_run(sources, tmp_path):
    out = tmp_path / "exp"
    log = tmp_path / "log"
    proc = launch(["-m", "hyperscale.cli"], ["adapt", str(sources["hyperformer++"]), "--tasks", "cb", "--k", "8",
                                             "--seeds", "1", "--train", "embedding", "--out", str(out),
                                             "--config", str(TINY), "train.micro_batch_size=8"], 2, log)
    text = log.read_text()
    assert proc.returncode != 0 and "not divisible by micro_batch_size x world size = 8 x 2" in text, text[-3000:]
    assert "cell 1/1" not in text and not out.exists()  # nothing written

