"""The benchmark's DeepSpeed rows and the trainer build their engines through the same code
(``hyperscale.training.engine.build_engine``), from the same DeepSpeed config, with the same persistent
(ZeRO-3) and checkpoint-excluded parameter sets, and step with the same loss (``forward_loss``).

In one process (world size 1, gloo): the trainer's ``Recipe.setup`` and the benchmark's ``_build_deepspeed``
each build an engine for ZeRO 0-3; a spy on ``build_engine`` records what each handed it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hyperscale import bench
from hyperscale.bench import rows as bench_rows
from hyperscale.training import engine as eng
from hyperscale.training.recipe import Recipe


@pytest.fixture
def dist_env(world1_group):
    """The session's world-size-1 group (tests/conftest.py)."""


@pytest.fixture
def spy(monkeypatch):
    calls: list[dict] = []
    real_build, real_loss = eng.build_engine, eng.forward_loss

    def build_engine(model, ds_config, device, **kw):
        engine = real_build(model, ds_config, device, **kw)
        calls.append({"ds_config": ds_config, "engine": engine})
        return engine

    def forward_loss(*a, **kw):
        calls.append({"loss": True})
        return real_loss(*a, **kw)

    monkeypatch.setattr(eng, "build_engine", build_engine)
    monkeypatch.setattr(eng, "forward_loss", forward_loss)
    return calls


def _sets(engine) -> dict:
    return {"excluded": eng.excluded_parameter_names(engine.module),
            "persistent": eng.persistent_parameter_names(engine),
            "checkpointed": set(engine.module_state_dict(exclude_frozen_parameters=True))}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bench_and_trainer_build_the_same_engine(dist_env, spy, tmp_path: Path, stage: int):
    s = bench.BenchSettings(backbone="t5-tiny", batch=4, src_len=16, tgt_len=4, precision="fp32",
                                warmup=1, steps=1, tasks=["rte", "cb"], reduction_factor=8)
    batch = bench_rows._make_batch(s, 32128)
    built = bench_rows._build_deepspeed(s, batch, stage)
    built.step()
    assert [c.keys() for c in spy] == [{"ds_config", "engine"}, {"loss"}], "bench: build_engine, then forward_loss"
    bench_cfg, bench_engine = spy[0]["ds_config"], spy[0]["engine"]
    bench_sets = _sets(bench_engine)
    built.cleanup()

    # the trainer, with the run config the benchmark's shape means (same train and deepspeed sections)
    cfg = bench.bench_run_config(s, stage)
    cfg = dataclasses.replace(
        cfg, output_dir=str(tmp_path / "run"),
        model=dataclasses.replace(cfg.model, backbone="preset:t5-tiny", reduction_factor=8),
        data=dataclasses.replace(cfg.data, tasks=["rte", "cb"], n_train=16, n_val=4, n_test=4, max_source_length=16),
        logging=dataclasses.replace(cfg.logging, tensorboard=False, progress_bar=False))
    recipe = Recipe(cfg)
    try:
        recipe.setup()
        assert len(spy) == 3 and spy[2]["engine"] is recipe.engine
        assert spy[2]["ds_config"] == bench_cfg
        trainer_sets = _sets(recipe.engine)
        assert trainer_sets == bench_sets
        assert trainer_sets["excluded"] >= {"backbone.shared.weight", "backbone.lm_head.weight",
                                            "backbone.encoder.embed_tokens.weight"}
        assert not trainer_sets["checkpointed"] & trainer_sets["excluded"]
        if stage == 3:
            assert any(n.startswith("bank.") for n in trainer_sets["persistent"])
        else:
            assert trainer_sets["persistent"] == set()
    finally:
        recipe.preempt and recipe.preempt.uninstall()
        recipe.engine is not None and recipe.engine.destroy()
