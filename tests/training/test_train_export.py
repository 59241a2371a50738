"""Export (ZeRO checkpoint -> standalone weights) of fp32 runs under ZeRO 0, 2 and 3 with 2 ranks.

The reference is the training engine itself: at the end of training the driver ran the engine's
module (all ranks together) on a fixed batch per task and saved logits and greedy generations
(``--probe``). The export, loaded with ``HyperscaleModel.from_pretrained`` in this process without
DeepSpeed, must give the same outputs.
"""
from __future__ import annotations

import json

import pytest
import torch

from hyperscale.cli import main as cli_main
from hyperscale.modeling.model import HyperscaleModel

pytestmark = pytest.mark.distributed

STAGES = [0, 2, 3]
ATOL = 1e-5  # fp32


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """stage -> (run, export dir) via ``hyperscale export RUN/checkpoints OUT --materialize``; lazily."""
    base = tmp_path_factory.mktemp("exports")
    cache: dict = {}

    def get(stage: int):
        if stage not in cache:
            run = runs(f"fp32-z{stage}")
            out = base / f"z{stage}"
            rc = cli_main(["export", str(run.ckpt_root), str(out), "--materialize"])
            assert rc == 0
            cache[stage] = (run, out)
        return cache[stage]

    return get


def _outputs(model: HyperscaleModel, probe: dict, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = probe["tasks"][task]
    with torch.no_grad():
        logits = model(input_ids=d["input_ids"], attention_mask=d["attention_mask"],
                       decoder_input_ids=d["decoder_input_ids"], task_ids=task).logits
        generated = model.generate(input_ids=d["input_ids"], attention_mask=d["attention_mask"], task_ids=task,
                                   max_new_tokens=d["generated"].shape[1] - 1, do_sample=False, num_beams=1)
    return logits.float(), generated


@pytest.mark.parametrize("stage", STAGES)
def test_export_matches_the_engine(exports, stage: int):
    run, out = exports(stage)
    for name in ("model.safetensors", "hyperscale_config.json", "tokenizer"):
        assert (out / name).exists(), name
    probe = torch.load(run.probe, weights_only=False)
    assert probe["step"] == 12
    model = HyperscaleModel.from_pretrained(out).eval()
    assert model.tasks == ["rte", "cb"]
    for task in model.tasks:
        logits, generated = _outputs(model, probe, task)
        ref = probe["tasks"][task]
        torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=ATOL, msg=f"ZeRO-{stage} {task} logits")
        assert torch.equal(generated, ref["generated"]), f"ZeRO-{stage} {task}: generations differ"


@pytest.mark.parametrize("stage", STAGES)
def test_export_equals_the_trainers_own_export(exports, stage: int):
    """``finish()`` exported the last checkpoint too; the CLI's export of the same checkpoint is identical."""
    from safetensors.torch import load_file

    run, out = exports(stage)
    mine, trainer = load_file(str(out / "model.safetensors")), load_file(str(run.dir / "export" / "model.safetensors"))
    assert mine.keys() == trainer.keys()
    for k in mine:
        assert torch.equal(mine[k], trainer[k]), k
    assert all(not k.startswith("backbone.") or "layer_norm" in k for k in mine)  # no frozen weights exported


def test_exports_agree_across_stages(exports):
    """The same training under ZeRO 0, 2 and 3 exports the same weights (fp32 rounding differences grow
    through 12 Adam steps at lr 3e-3 to about 1e-5)."""
    from safetensors.torch import load_file

    ref = load_file(str(exports(0)[1] / "model.safetensors"))
    for stage in (2, 3):
        other = load_file(str(exports(stage)[1] / "model.safetensors"))
        assert other.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(other[k], ref[k], rtol=1e-3, atol=1e-4, msg=f"ZeRO-{stage} {k}")


@pytest.mark.parametrize("stage", [2, 3])
def test_materialized_export_equals_the_hypernetwork_export(exports, stage: int):
    run, out = exports(stage)
    mat_dir = out / "materialized"
    assert (mat_dir / "model.safetensors").is_file() and (mat_dir / "tokenizer").is_dir()
    hyper = HyperscaleModel.from_pretrained(out).eval()
    mat = HyperscaleModel.from_pretrained(mat_dir).eval()
    cfg = json.loads((mat_dir / "hyperscale_config.json").read_text())
    assert cfg["method"] != "hyperformer++" and cfg["tasks"] == ["rte", "cb"]
    # no hypernetwork in the materialized weights: static per-task adapters (plus the layer norms)
    hyper_keys, mat_keys = set(hyper.trainable_state_dict()), set(mat.trainable_state_dict())
    assert any("generator" in k for k in hyper_keys)
    assert not [k for k in mat_keys if any(w in k for w in ("generator", "projector", "task_embeddings"))]
    probe = torch.load(run.probe, weights_only=False)
    for task in ("rte", "cb"):
        lh, gh = _outputs(hyper, probe, task)
        lm, gm = _outputs(mat, probe, task)
        torch.testing.assert_close(lm, lh, rtol=0, atol=ATOL, msg=f"{task} logits")
        assert torch.equal(gm, gh), f"{task}: generations differ"
    # and the same through `hyperscale predict` (rank classification) from each export
    texts = ["sentence1: A man is playing a guitar. sentence2: A person plays an instrument.",
             "sentence1: The cat slept. sentence2: The dog barked loudly."]
    preds = []
    for d in (out, mat_dir):
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli_main(["predict", str(d), "--task", "rte", "--mode", "rank", *texts]) == 0
        preds.append([ln.split("\t")[0] for ln in buf.getvalue().splitlines() if ln.strip()])
    assert len(preds[0]) == 2 and preds[0] == preds[1]


def test_export_refuses_an_existing_export(exports, tmp_path, capsys):
    run, out = exports(2)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc = cli_main(["export", str(run.ckpt_root), str(out)])
    assert rc == 2
    assert "already holds an export" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # a single step directory is a valid source too
    assert cli_main(["export", str(run.checkpoint(8)), str(tmp_path / "step8")]) == 0
    assert HyperscaleModel.from_pretrained(tmp_path / "step8").tasks == ["rte", "cb"]
    # no checkpoint at all
    assert cli_main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
