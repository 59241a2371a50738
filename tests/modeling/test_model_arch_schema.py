"""``ArchConfig``: the one definition of the architecture fields; a saved model holds all of them and
``hyperscale params`` takes each as an option."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from hyperscale.cli.params import add_parser, run
from hyperscale.errors import ConfigError
from hyperscale.modeling import HyperscaleModel
from hyperscale.modeling.config import ARCH_FIELDS, CONFIG_NAME, ArchConfig, HyperscaleConfig
from modeling_helpers import TASKS, tiny_backbone

ARCH = ArchConfig(method="hyperformer++", reduction_factor=4, task_embedding_dim=8, layer_embedding_dim=4,
                  position_embedding_dim=2, projector_hidden_dim=16, conditioning_dim=12, adapter_ln_eps=1e-3,
                  train_layer_norms=False)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hyperscale")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["params", *argv])


def test_every_field_differs_from_its_default_here():
    assert all(getattr(ARCH, f.name) != f.default for f in dataclasses.fields(ArchConfig) if f.name != "method")


def test_saved_config_holds_the_whole_architecture(tmp_path):
    model = HyperscaleModel.from_backbone(tiny_backbone(), TASKS, **ARCH.arch_dict())
    assert model.config.arch == ARCH
    stack = next(iter(model.bank.stacks.values()))
    assert model.bank.task_embeddings.shape == (len(TASKS), 8)
    assert stack.projector[0].in_features == 8 + 4 + 2 and stack.projector[0].out_features == 16
    assert stack.projector[2].out_features == 12
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if "layer_norm" in n)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert {k: saved[k] for k in ARCH_FIELDS} == dataclasses.asdict(ARCH)
    loaded = HyperscaleModel.from_pretrained(tmp_path / "m", backbone=tiny_backbone())
    assert loaded.config.arch == ARCH and loaded.config == HyperscaleConfig.from_dict(saved)


def test_from_arch_and_replace():
    cfg = HyperscaleConfig.from_arch(ARCH, TASKS, backbone_id="x")
    assert cfg.arch == ARCH and cfg.tasks == TASKS and cfg.backbone_id == "x"
    with pytest.raises(ConfigError, match="conditioning_dim must be >= 1, got 0"):
        dataclasses.replace(cfg, conditioning_dim=0)
    with pytest.raises(ConfigError, match="train_layer_norms must be true or false"):
        ArchConfig(train_layer_norms="yes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ARCH.method = "adapters"  # type: ignore[misc]


def test_params_cli_takes_every_architecture_field(capsys):
    assert run(_args("--backbone", "t5-small", "--tasks", "2", "--json")) == 0
    base = json.loads(capsys.readouterr().out)
    assert run(_args("--backbone", "t5-small", "--tasks", "2", "--task-embedding-dim", "32",
                     "--projector-hidden-dim", "64", "--no-train-layer-norms", "--adapter-ln-eps", "1e-6", "--json")) == 0
    smaller = json.loads(capsys.readouterr().out)
    assert smaller["groups"]["T5 layer norms"] == 0 < base["groups"]["T5 layer norms"]
    assert smaller["groups"]["task embeddings"] == 2 * 32 and smaller["trainable"] < base["trainable"]
    with pytest.raises(ConfigError, match="conditioning_dim must be >= 1"):
        run(_args("--tasks", "2", "--conditioning-dim", "0"))
