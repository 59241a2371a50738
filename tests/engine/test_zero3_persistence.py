"""ZeRO-3: the frozen backbone is sharded, the hypernetwork and task embeddings stay whole on every rank.

One process (world size 1) is enough to see partitioning: a ZeRO-3 parameter's local ``.data`` is
empty unless it is gathered. The persistence threshold is lowered to 100 elements so that, without
hyperscale's engine builder (``build_engine``), every bank tensor would be partitioned too.
"""
from __future__ import annotations

import pytest
import torch

import deepspeed

from hyperscale.training.engine import build_engine


@pytest.fixture
def dist_env(world1_group):
    """The session's world-size-1 group (tests/conftest.py)."""


def _engine(stage: int, persist: bool):
    from hyperscale.modeling import HyperscaleModel
    from hyperscale.training.config import load_config
    from hyperscale.training.ds_config import build_ds_config

    cfg = load_config(None, ["train.precision=fp32", f"deepspeed.zero_stage={stage}", "train.global_batch_size=4",
                             "train.micro_batch_size=4", "train.max_steps=5", "train.warmup_steps=1"])
    ds = build_ds_config(cfg, 1)
    if stage == 3:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 100
    torch.manual_seed(0)
    model = HyperscaleModel.from_backbone("preset:t5-tiny", ["rte", "cb"], reduction_factor=8)
    model.backbone.config.dropout_rate = 0.0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    if persist:  # the trainer's (and the benchmark's) engine
        engine = build_engine(model, ds, torch.device("cpu"))
    else:
        engine, *_ = deepspeed.initialize(model=model, config=ds,
                                          model_parameters=[p for p in model.parameters() if p.requires_grad])
    return engine, model


def _steps(engine, n=3):
    g = torch.Generator().manual_seed(1)
    losses = []
    for i in range(n):
        ids = torch.randint(2, 200, (4, 9), generator=g)
        lab = torch.randint(2, 200, (4, 3), generator=g)
        out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=lab, task_ids=["rte", "cb"][i % 2])
        engine.backward(out.loss)
        engine.step()
        losses.append(out.loss.item())
    return losses


def test_zero3_shards_backbone_keeps_bank_whole_and_matches_zero2(dist_env):
    ref_engine, _ = _engine(2, persist=False)
    ref = _steps(ref_engine)
    ref_engine.destroy()

    engine, model = _engine(3, persist=True)
    losses = _steps(engine)
    whole = {n: (p.data.numel(), p.ds_numel) for n, p in model.bank.named_parameters()}
    assert all(local == full for local, full in whole.values()), whole
    sharded = [n for n, p in model.backbone.named_parameters() if not p.requires_grad and p.data.numel() != p.ds_numel]
    assert len(sharded) > 10, "the frozen backbone should stay partitioned under ZeRO-3"
    assert losses == pytest.approx(ref, rel=1e-5, abs=1e-6)
    engine.destroy()


def test_zero3_without_persistence_partitions_bank(dist_env):
    """The control: the same engine without the builder's persistence leaves large bank tensors partitioned."""
    engine, model = _engine(3, persist=False)
    _steps(engine, 1)
    partitioned = [n for n, p in model.bank.named_parameters() if p.data.numel() != p.ds_numel]
    assert any("generator.weight" in n for n in partitioned)
    engine.destroy()
