"""The backbone hash computed from a checkpoint's files equals the hash of the loaded model, for every layout a
backbone directory comes in, and reads the files piece by piece (never a whole large weight at once)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hyperscale.modeling import HyperscaleModel
from hyperscale.modeling.io import (
    HASH_BLOCK,
    _file_chunks,
    backbone_file_hash,
    backbone_hash,
    frozen_params,
    hash_names,
    load_backbone,
    weight_files,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERSCALE_CACHE", str(tmp_path / "cache"))


def saved(tmp_path: Path, preset: str, name: str, dtype=None, **save_kwargs) -> Path:
    torch.manual_seed(0)
    model, _ = load_backbone(f"preset:{preset}")
    if dtype is not None:
        model = model.to(dtype)
    out = tmp_path / name
    if save_kwargs.pop("bin", False):  # the legacy PyTorch layout (transformers 5 writes safetensors only)
        out.mkdir()
        model.config.save_pretrained(str(out))
        torch.save(model.state_dict(), out / "pytorch_model.bin")
        return out
    model.save_pretrained(str(out), **save_kwargs)
    return out


@pytest.mark.parametrize("layout", ["fp32", "bf16", "sharded", "bin", "v1_1"])
def test_file_hash_equals_the_loaded_models_hash(tmp_path, layout):
    preset = "t5-v1_1-tiny" if layout == "v1_1" else "t5-tiny"
    kwargs = {"max_shard_size": "1MB"} if layout == "sharded" else {"bin": True} if layout == "bin" else {}
    d = saved(tmp_path, preset, layout, torch.bfloat16 if layout == "bf16" else None, **kwargs)
    if layout == "sharded":
        assert len(list(d.glob("*.safetensors"))) > 1 and list(d.glob("*.index.json"))
    if layout == "bin":
        assert list(d.glob("pytorch_model*.bin")) and not list(d.glob("*.safetensors"))
    model = HyperscaleModel.from_backbone(d, ["rte"], method="hyperformer++")
    from_files = backbone_file_hash(d, hash_names(model.backbone))
    assert model.config.backbone_hash == from_files == backbone_hash(frozen_params(model.backbone))
    if layout == "v1_1":  # a separate head is hashed with its own values, not the embedding's
        assert model.backbone.lm_head.weight is not model.backbone.shared.weight


def test_fp32_and_bf16_copies_hash_alike_and_other_weights_differ(tmp_path):
    """The hash rounds to bf16 (a backbone saved or loaded in either dtype is the same backbone); a changed value
    of a large tensor (sampled, summed) or of a small one changes it."""
    a, b = saved(tmp_path, "t5-tiny", "a"), saved(tmp_path, "t5-tiny", "b", torch.bfloat16)
    model = HyperscaleModel.from_backbone(a, ["rte"])
    names = hash_names(model.backbone)
    assert backbone_file_hash(a, names) == backbone_file_hash(b, names)
    torch.manual_seed(0)
    other, _ = load_backbone("preset:t5-tiny")
    with torch.no_grad():
        other.shared.weight[7, 3] += 0.5  # one element of a tensor above HASH_BLOCK elements (not on the sample)
    other.save_pretrained(str(tmp_path / "c"))
    assert backbone_file_hash(tmp_path / "c", names) != backbone_file_hash(a, names)


def test_large_weights_are_read_in_pieces(tmp_path):
    d = saved(tmp_path, "t5-tiny", "m")
    files = weight_files(d)
    large = 0
    for key, path in files.items():
        shape, chunks = _file_chunks(path, key)
        pieces = list(chunks)
        numel = math.prod(shape)
        assert sum(p.numel() for p in pieces) == numel
        if numel > HASH_BLOCK:
            large += 1
            assert max(p.numel() for p in pieces) <= numel // 2, key
    assert large >= 1  # t5-tiny's embedding (32128 x 64)


def test_file_hash_is_cached_and_the_cache_follows_the_files(tmp_path, monkeypatch):
    import hyperscale.modeling.io as io

    d = saved(tmp_path, "t5-tiny", "m")
    names = hash_names(HyperscaleModel.from_backbone(d, ["rte"]).backbone)
    first = backbone_file_hash(d, names)
    monkeypatch.setattr(io, "_file_chunks", lambda *a: pytest.fail("read the files although the hash is cached"))
    assert backbone_file_hash(d, names) == first
    monkeypatch.undo()
    torch.manual_seed(1)
    load_backbone("preset:t5-tiny")[0].save_pretrained(str(d))  # the files change: the cache no longer applies
    assert backbone_file_hash(d, names) != first
