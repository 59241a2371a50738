"""An export stands alone: it carries its backbone (unless that is a hub id), records it relative to itself, and
loads, predicts and evaluates after it was moved and the run (with its backbone) was deleted; the backbone's
hash is still checked; ``export.json`` says what the export holds; its files are 0644 and its folders 0755.

The first test trains a run of its own (about 10 s: 4 steps of configs/tiny-cpu.yaml, one process) because it
deletes it; the others export a checkpoint written by hand (``_fake_checkpoint``) of a tiny T5.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5ForConditionalGeneration

import hyperscale
from hyperscale.cli import main as cli_main
from hyperscale.errors import CheckpointError, HyperscaleError, RunExistsError
from hyperscale.modeling.model import HyperscaleModel
from hyperscale.training import export as export_mod
from helpers import TINY, launch, log_tail

TASKS = ["rte", "cb"]
RTE_TEXTS = ["sentence1: A man is playing a guitar. sentence2: A person plays an instrument.",
             "sentence1: The cat slept. sentence2: The dog barked loudly."]


@pytest.fixture(autouse=True)
def _umask_022():
    """The modes asserted below are those of the usual umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> tuple[set, set]:
    files = {oct(stat.S_IMODE(p.stat().st_mode)) for p in root.rglob("*") if p.is_file()}
    dirs = {oct(stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")] if p.is_dir()}
    return files, dirs


def _cli(argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(argv)
    assert rc == 0, f"hyperscale {' '.join(argv)} exited {rc}"
    return buf.getvalue()


def _logits(model: HyperscaleModel, ids: torch.Tensor, task: str) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids[:, :3],
                     task_ids=task).logits


def _outputs(export: Path) -> dict:
    """What the export gives: rank-mode predictions, a 4-example evaluation and logits, per model folder."""
    ids = torch.tensor([[5, 17, 23, 9, 1], [8, 3, 41, 2, 1]])
    got = {}
    for d in (export, export / "materialized"):
        predict = _cli(["predict", str(d), "--task", "rte", "--mode", "rank", *RTE_TEXTS])
        evaluated = json.loads(_cli(["eval", str(d), "--n", "4", "--json"]))
        model = HyperscaleModel.from_pretrained(d).eval()
        got[d.name] = (predict, evaluated, {t: _logits(model, ids, t) for t in TASKS})
    return got


@pytest.mark.distributed
def test_an_export_outlives_its_run(tmp_path: Path):
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    proc = launch(["-m", "hyperscale.train"], [str(TINY), f"output_dir={run}", "deepspeed.zero_stage=0",
                                               "train.max_steps=4"], 1, log, timeout=240, preloaded=True)
    assert proc.returncode == 0, log_tail(log)
    recorded = json.loads((run / "checkpoints" / "step-00000004" / "hyperscale_config.json").read_text())
    assert recorded["backbone_id"] == str((run / "backbone").resolve())  # a preset: saved into the run

    out = tmp_path / "export"
    printed = _cli(["export", str(run), str(out), "--materialize"])
    # said as done: the run's backbone (a preset saved into the run) and the export share a file system here, so
    # its files are hard links, not copies (issue 20)
    assert "exported step 4" in printed and "backbone hard-linked (no second copy on disk) into" in printed
    assert (out / "backbone" / "model.safetensors").stat().st_nlink > 1
    assert "HyperscaleModel.from_pretrained(" in printed
    assert sorted(p.name for p in (out / "backbone").iterdir()) == ["config.json", "generation_config.json",
                                                                     "model.safetensors"]
    assert not (out / "materialized" / "backbone").exists()  # one copy, shared
    assert json.loads((out / "hyperscale_config.json").read_text())["backbone_id"] == "./backbone"
    assert json.loads((out / "materialized" / "hyperscale_config.json").read_text())["backbone_id"] == "../backbone"
    # the trainer's own export (results.ensure_export) stands alone too
    assert json.loads((run / "export" / "hyperscale_config.json").read_text())["backbone_id"] == "./backbone"
    assert json.loads((run / "export" / "export.json").read_text())["step"] == 4

    before = _outputs(out)
    moved = tmp_path / "elsewhere" / "moved-export"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(run)  # the run, its checkpoints, its backbone
    assert not (run / "backbone").exists() and not out.exists()
    after = _outputs(moved)

    for name in ("moved-export", "materialized"):
        b, a = before["export" if name == "moved-export" else name], after[name]
        assert a[0] == b[0] and len(a[0].splitlines()) == 2  # the same predictions
        assert a[1] == b[1] and set(a[1]["test"]["tasks"]) == set(TASKS)  # the same evaluation
        for t in TASKS:
            assert torch.equal(a[2][t], b[2][t]), (name, t)
    # the hypernetwork export and its materialized twin agree
    for t in TASKS:
        torch.testing.assert_close(after["materialized"][2][t], after["moved-export"][2][t], rtol=0, atol=1e-5)
    # a model loaded from the moved export names the backbone it was loaded from
    model = HyperscaleModel.from_pretrained(moved)
    assert model.config.backbone_id == str((moved / "backbone").resolve())
    info = json.loads((moved / "export.json").read_text())
    assert info["step"] == 4 and info["materialized"] == "materialized" and info["backbone"]["included"]


# -------------------------------------------------------------------------------------- a hand-made checkpoint
def _tiny_backbone(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   relative_attention_num_buckets=8, feed_forward_proj="relu", tie_word_embeddings=True)
    return T5ForConditionalGeneration(cfg).eval()


def _perturb(model: HyperscaleModel) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.bank.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _fake_checkpoint(root: Path, model: HyperscaleModel, step: int = 3) -> Path:
    """A checkpoint directory as the trainer writes it at ZeRO-0 (only what export reads)."""
    tag = root / f"step-{step:08d}"
    tag.mkdir(parents=True)
    (tag / "run_config.yaml").write_text(yaml.safe_dump({"deepspeed": {"zero_stage": 0}}))
    torch.save({"module": {k: v.clone() for k, v in model.trainable_state_dict().items()}},
               tag / "mp_rank_00_model_states.pt")
    (tag / "hyperscale_config.json").write_text(json.dumps(model.config.to_dict()))
    (tag / "COMPLETE").write_text("ok\n")  # a checkpoint from before digests were recorded
    return tag


@pytest.fixture
def trained(tmp_path: Path):
    """(model, checkpoint) of HyperFormer++ on a tiny T5 saved in tmp_path/t5-tiny (weights written 0600, as
    transformers writes them)."""
    bb_dir = tmp_path / "t5-tiny"
    _tiny_backbone().save_pretrained(bb_dir)
    model = HyperscaleModel.from_backbone(str(bb_dir), TASKS, reduction_factor=8).eval()
    _perturb(model)
    return model, _fake_checkpoint(tmp_path / "checkpoints", model)


IDS = torch.tensor([[5, 17, 23, 9, 1], [8, 3, 41, 2, 1]])


def test_export_json_says_what_the_export_holds(trained, tmp_path: Path):
    model, tag = trained
    out = export_mod.export_checkpoint(tag, tmp_path / "export", materialize=True)
    info = json.loads((out / "export.json").read_text())
    assert info["hyperscale_version"] == hyperscale.__version__ and info["format"] == "hyperscale-export"
    assert info["method"] == "hyperformer++" and info["tasks"] == TASKS
    assert info["step"] == 3 and info["source"] == {"checkpoint": str(tag.resolve()), "step": 3}
    assert info["backbone"] == {"included": True, "path": "backbone", "backbone_id": "./backbone", "hub_id": None,
                                "origin": str((tmp_path / "t5-tiny").resolve()),
                                "hash": model.config.backbone_hash}
    assert info["materialized"] == "materialized" and info["tokenizer"] is None
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert info["files"] == {k: v for k, v in files.items() if k != "export.json"}
    assert {"model.safetensors", "hyperscale_config.json", "backbone/config.json", "backbone/model.safetensors",
            "materialized/model.safetensors", "materialized/hyperscale_config.json"} <= set(info["files"])
    predict, python = info["how_to_load"]
    assert predict.startswith(f"hyperscale predict {out.resolve()} --task rte ")
    assert f"HyperscaleModel.from_pretrained({str(out.resolve())!r})" in python


def test_export_files_are_0644_and_folders_0755(trained, tmp_path: Path):
    model, tag = trained
    assert oct(stat.S_IMODE((tmp_path / "t5-tiny" / "model.safetensors").stat().st_mode)) == "0o600"
    out = export_mod.export_checkpoint(tag, tmp_path / "export", materialize=True)
    (tag / "tokenizer").mkdir()  # a second export, with a tokenizer folder copied from the checkpoint
    (tag / "tokenizer" / "tokenizer_config.json").write_text("{}")
    os.chmod(tag / "tokenizer" / "tokenizer_config.json", 0o600)
    out2 = export_mod.export_checkpoint(tag, tmp_path / "export2")
    for d in (out, out2):
        assert _modes(d) == ({"0o644"}, {"0o755"}), d
    assert (out2 / "tokenizer" / "tokenizer_config.json").is_file()
    # a plain save_pretrained too (safetensors writes through a temporary file created 0600)
    saved = model.save_pretrained(tmp_path / "saved")
    assert _modes(saved) == ({"0o644"}, {"0o755"})


def test_a_moved_export_loads_alone_and_still_checks_the_backbone_hash(trained, tmp_path: Path):
    model, tag = trained
    out = export_mod.export_checkpoint(tag, tmp_path / "export", materialize=True)
    moved = tmp_path / "far" / "away"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(tmp_path / "t5-tiny")
    shutil.rmtree(tmp_path / "checkpoints")
    for d in (moved, moved / "materialized"):
        loaded = HyperscaleModel.from_pretrained(d).eval()
        for t in TASKS:
            torch.testing.assert_close(_logits(loaded, IDS, t), _logits(model, IDS, t), rtol=0, atol=1e-5)

    # a frozen weight of the copy replaced: refused, by the hash recorded at training time
    weights = moved / "backbone" / "model.safetensors"
    sd = load_file(str(weights))
    key = next(k for k in sorted(sd) if "SelfAttention.q.weight" in k)
    sd[key] = sd[key] + 0.01
    save_file(sd, str(weights), metadata={"format": "pt"})
    for d in (moved, moved / "materialized"):
        with pytest.raises(HyperscaleError, match="does not match"):
            HyperscaleModel.from_pretrained(d)
    with pytest.raises(CheckpointError, match="does not match"):
        export_mod.load_export(moved)

    # the copy gone: a message that says where it was expected
    shutil.rmtree(moved / "backbone")
    with pytest.raises(CheckpointError, match=r"'\./backbone' \(relative to it\)"):
        HyperscaleModel.from_pretrained(moved)
    with pytest.raises(CheckpointError, match=r"'\.\./backbone' \(relative to it\)"):
        HyperscaleModel.from_pretrained(moved / "materialized")


def test_a_hub_backbone_is_recorded_not_copied(tmp_path: Path, monkeypatch):
    hub_id = "some-org/t5-tiny-not-downloaded"
    backbone = _tiny_backbone()
    model = HyperscaleModel.from_backbone(backbone, TASKS, reduction_factor=8).eval()
    _perturb(model)
    model.config = dataclasses.replace(model.config, backbone_id=hub_id)
    tag = _fake_checkpoint(tmp_path / "checkpoints", model)
    real = export_mod.load_backbone
    asked = []

    def fake_hub(spec, torch_dtype=None):  # the hub, without the network
        asked.append(spec)
        return (_tiny_backbone(), spec) if spec == hub_id else real(spec, torch_dtype)

    monkeypatch.setattr(export_mod, "load_backbone", fake_hub)
    out = export_mod.export_checkpoint(tag, tmp_path / "export", materialize=True)
    assert asked == [hub_id]
    assert not (out / "backbone").exists()
    assert json.loads((out / "hyperscale_config.json").read_text())["backbone_id"] == hub_id
    assert json.loads((out / "materialized" / "hyperscale_config.json").read_text())["backbone_id"] == hub_id
    info = json.loads((out / "export.json").read_text())["backbone"]
    assert info["included"] is False and info["hub_id"] == hub_id and info["backbone_id"] == hub_id
    assert not any(k.startswith("backbone/") for k in json.loads((out / "export.json").read_text())["files"])
    loaded = HyperscaleModel.from_pretrained(out, backbone=_tiny_backbone())  # the hub model, given
    torch.testing.assert_close(_logits(loaded.eval(), IDS, "cb"), _logits(model, IDS, "cb"), rtol=0, atol=1e-5)

    # asked for, the hub model is included (as loaded, in Hugging Face layout) and the export stands alone
    out2 = export_mod.export_checkpoint(tag, tmp_path / "export2", include_backbone=True)
    monkeypatch.undo()
    assert (out2 / "backbone" / "config.json").is_file()
    assert json.loads((out2 / "hyperscale_config.json").read_text())["backbone_id"] == "./backbone"
    assert json.loads((out2 / "export.json").read_text())["backbone"]["origin"] == hub_id
    loaded = HyperscaleModel.from_pretrained(out2).eval()
    torch.testing.assert_close(_logits(loaded, IDS, "cb"), _logits(model, IDS, "cb"), rtol=0, atol=1e-5)


def test_no_include_backbone_records_the_directory(trained, tmp_path: Path, capsys):
    _, tag = trained
    out = tmp_path / "export"
    assert cli_main(["export", str(tag), str(out), "--no-include-backbone"]) == 0
    assert "not included" in capsys.readouterr().out
    assert not (out / "backbone").exists()
    assert json.loads((out / "hyperscale_config.json").read_text())["backbone_id"] == str((tmp_path / "t5-tiny").resolve())
    assert json.loads((out / "export.json").read_text())["backbone"]["included"] is False
    HyperscaleModel.from_pretrained(out)


def test_an_export_is_never_replaced_without_overwrite(trained, tmp_path: Path, capsys):
    _, tag = trained
    out = export_mod.export_checkpoint(tag, tmp_path / "export", materialize=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert cli_main(["export", str(tag), str(out)]) == 2
    assert "already holds an export" in capsys.readouterr().err
    with pytest.raises(RunExistsError):
        export_mod.export_checkpoint(tag, out, include_backbone=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # with --overwrite: replaced, nothing of the earlier export left over (no materialized/, no backbone/)
    assert cli_main(["export", str(tag), str(out), "--overwrite", "--no-include-backbone"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "hyperscale_config.json", "model.safetensors"]
    HyperscaleModel.from_pretrained(out)
    # what an export stopped half-way left (no config yet) is replaced without --overwrite
    shutil.rmtree(out)
    (out / ".backbone.partial").mkdir(parents=True)
    (out / "backbone").mkdir()
    (out / "backbone" / "stale.bin").write_text("x")
    export_mod.export_checkpoint(tag, out)
    assert sorted(p.name for p in (out / "backbone").iterdir()) == ["config.json", "generation_config.json",
                                                                     "model.safetensors"]
    assert not (out / ".backbone.partial").exists()
    HyperscaleModel.from_pretrained(out)


def test_saving_a_loaded_export_keeps_it_standalone(trained, tmp_path: Path):
    _, tag = trained
    out = export_mod.export_checkpoint(tag, tmp_path / "export")
    loaded = HyperscaleModel.from_pretrained(out)
    loaded.save_pretrained(out, overwrite=True)  # back into the export: the copy inside it stays relative
    assert json.loads((out / "hyperscale_config.json").read_text())["backbone_id"] == "./backbone"
    elsewhere = loaded.save_pretrained(tmp_path / "elsewhere")  # anywhere else: where the copy is
    assert json.loads((elsewhere / "hyperscale_config.json").read_text())["backbone_id"] == str((out / "backbone").resolve())
    HyperscaleModel.from_pretrained(elsewhere)
