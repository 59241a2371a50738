"""ZeRO-3 with a directly sharded backbone, and the export of bf16 ZeRO-1 checkpoints."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed


def test_sharded_build_trains_like_zero3(runs):
    """deepspeed.build_sharded loads the backbone through HF's ZeRO-3 path; the run is the same run."""
    sharded, plain = runs("fp32-z3-sharded"), runs("fp32-z3")
    a, b = sharded.losses(), plain.losses()
    assert a.keys() == b.keys() and len(a) == 12
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step
    assert (sharded.dir / "export" / "model.safetensors").is_file()


def test_bf16_zero1_export_takes_the_fp32_masters(runs):
    """bf16 + ZeRO-1 writes DeepSpeed's BF16_Optimizer files, which zero_to_fp32 cannot read: the export
    rebuilds the fp32 master weights from them. They round to the bf16 module weights of the checkpoint
    (within bf16 precision) and are not merely those bf16 values."""
    run = runs("bf16-z1")
    ckpt = run.checkpoint(12)
    assert list(ckpt.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt")), "expected BF16_Optimizer files"
    exported = load_file(str(run.dir / "export" / "model.safetensors"))
    module = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    assert set(exported) == set(module)
    differs = 0
    for name, master in exported.items():
        bf16 = module[name].float()
        assert master.dtype == torch.float32
        torch.testing.assert_close(master.to(torch.bfloat16).float(), bf16, rtol=0, atol=0, msg=name)
        differs += int(not torch.equal(master, bf16))
    assert differs > 0, "the export should hold fp32 masters, not the bf16 weights"


def test_zero3_generation_eval_keeps_ranks_in_step(runs):
    """Greedy generation under ZeRO-3 needs every rank in every forward (synced_gpus); with 15 test
    examples on 2 ranks the shards are uneven and padded. The run must finish (no hang) and score
    every task on both splits, on every test example."""
    import json

    run = runs("fp32-z3")
    results = json.loads((run.dir / "results.json").read_text())
    assert set(results) == {"validation", "test"}
    for split in results.values():
        assert set(split["tasks"]) == {"rte", "cb"}
        assert all(set(m) == {"acc"} for m in split["tasks"].values()), split["tasks"]
    import yaml

    assert yaml.safe_load((run.dir / "config.yaml").read_text())["eval"]["mode"] == "generate"
    protocol = json.loads((run.dir / "data_protocol.json").read_text())["tasks"]
    assert {t: p["sizes"]["test"] for t, p in protocol.items()} == {"rte": 15, "cb": 15}
    assert (run.dir / "export" / "model.safetensors").is_file()


def test_export_reads_the_backbone_files_without_building_the_backbone(runs, tmp_path, monkeypatch):
    """The export of a ZeRO-3 build_sharded run checks the backbone hash from the files, one piece at a time, and
    writes the trained weights from the checkpoint: it never builds the backbone (load_backbone is made to fail)
    and never allocates a tensor the size of a whole large frozen weight (a dispatch mode watches every op)."""
    import hyperscale.training.export as export_mod
    from hyperscale.modeling.io import HASH_BLOCK, weight_files
    from hyperscale.modeling.model import HyperscaleModel
    from hyperscale.training.export import export_checkpoint, load_export
    from torch.utils._python_dispatch import TorchDispatchMode

    run = runs("fp32-z3-sharded")
    backbone_dir = run.dir / "backbone"
    from safetensors import safe_open

    sizes = set()
    for key, path in weight_files(backbone_dir).items():
        with safe_open(str(path), framework="pt") as f:
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
        if n > HASH_BLOCK:
            sizes.add(n)
    assert sizes  # t5-tiny's embedding

    class Watch(TorchDispatchMode):
        whole: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not any(r.alias_info is not None for r in func._schema.returns):
                for t in (out if isinstance(out, (tuple, list)) else [out]):
                    if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel() in sizes:
                        self.whole.append(f"{func} -> {tuple(t.shape)}")
            return out

    def no_backbone(*a, **k):
        raise AssertionError("the export built the backbone")

    monkeypatch.setattr(export_mod, "load_backbone", no_backbone)
    monkeypatch.setenv("HYPERSCALE_CACHE", str(tmp_path / "cache"))  # the hash is computed, not read from a cache
    with Watch() as watch:
        out = export_checkpoint(run.checkpoint(12), tmp_path / "export")
    assert watch.whole == []
    monkeypatch.undo()
    # the standalone export loads (the hash verified against the whole backbone) and equals the trainer's export
    loaded, _ = load_export(out, device="cpu", dtype="fp32")
    trainer_export = load_file(str(run.dir / "export" / "model.safetensors"))
    mine = load_file(str(out / "model.safetensors"))
    assert mine.keys() == trainer_export.keys()
    assert all(torch.equal(mine[k], trainer_export[k]) for k in mine)
    assert loaded.config.backbone_hash == HyperscaleModel.from_backbone(
        str(backbone_dir), loaded.config.tasks, method=loaded.config.method,
        reduction_factor=loaded.config.reduction_factor).config.backbone_hash


def test_no_rank_holds_a_whole_frozen_weight_at_t5_small_size(tmp_path):
    """t5-small shapes, 2 ranks, ZeRO-3, bf16, build_sharded (tests/training/sharded_probe.py): reading the
    partitions from the files, hashing the files and two training steps allocate no tensor the size of a whole
    frozen weight of more than HASH_BLOCK elements (outside DeepSpeed's gathers inside forward and backward); each
    rank holds half of every weight; between steps only DeepSpeed's persistent small weights are whole; the hash
    equals that of the model loaded whole."""
    import json

    from hyperscale.modeling.io import load_backbone
    from hyperscale.modeling.model import HyperscaleModel
    from helpers import launch, log_tail

    torch.manual_seed(0)
    backbone, _ = load_backbone("preset:t5-small")
    directory = tmp_path / "t5-small"
    backbone.save_pretrained(str(directory))
    del backbone
    out, log = tmp_path / "probe.json", tmp_path / "probe.log"
    proc = launch([str(Path(__file__).resolve().parent / "sharded_probe.py")], [str(directory), str(out)], 2, log, preloaded=True)
    assert proc.returncode == 0, log_tail(log)
    probe = json.loads(out.read_text())
    assert probe["world"] == 2 and probe["whole"] == [], probe["whole"][:5]
    assert max(probe["frozen_sizes"]) == 32128 * 512  # the embedding, whole nowhere
    for name, (local, whole) in probe["partitions"].items():
        assert local == -(-whole // 2), name
    persistence_threshold = 100_000  # ds_configs/zero3_bf16.json: smaller weights stay whole by DeepSpeed's design
    assert all(0 < n <= persistence_threshold for n in probe["live_after_step"]), probe["live_after_step"]
    assert all(math.isfinite(x) for x in probe["losses"])
    whole = HyperscaleModel.from_backbone(str(directory), ["rte", "cb"], method="hyperformer++", reduction_factor=8)
    assert probe["hash"] == whole.config.backbone_hash
