"""One architecture schema (``ArchConfig``) behind both the run config's ``model:`` section and the saved
``hyperscale_config.json``; run configs are frozen and changed only through overrides. In-process, no engine."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

import hyperscale.data.specs as specs_mod
from helpers import TINY
import hyperscale.training.config as config_mod
from hyperscale.errors import ConfigError
from hyperscale.modeling.config import ARCH_FIELDS, CONFIG_NAME, ArchConfig, HyperscaleConfig
from hyperscale.training.config import CONFIG_DIR, ModelConfig, RunConfig, load_config

SHIPPED_CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def non_default(f: dataclasses.Field):
    """A valid value other than the field's default, read from the schema (its type and rules)."""
    default, rules = f.default, f.metadata
    if "choices" in rules:
        return next(c for c in rules["choices"] if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1  # >= any "min" the default satisfies
    if isinstance(default, float):
        return default * 10  # > any "gt" 0 the default satisfies
    raise AssertionError(f"ArchConfig.{f.name}: give this new field a non-default test value here")


ARCH_VALUES = {f.name: non_default(f) for f in dataclasses.fields(ArchConfig)}


# ---------------------------------------------------------------------------------------------- one schema
def test_architecture_fields_are_defined_once():
    assert issubclass(ModelConfig, ArchConfig) and issubclass(HyperscaleConfig, ArchConfig)
    arch = {f.name: f for f in dataclasses.fields(ArchConfig)}
    assert tuple(arch) == ARCH_FIELDS and {"method", "reduction_factor", "adapter_ln_eps"} <= set(arch)
    for cls in (ModelConfig, HyperscaleConfig):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        # inherited, not redeclared: the very same Field objects (default, help, rules)
        assert all(fields[name] is arch[name] for name in arch), cls.__name__
    run_only = {f.name for f in dataclasses.fields(ModelConfig)} - set(arch)
    assert run_only == {"backbone", "dropout", "gradient_checkpointing", "init_seed"}
    assert not run_only & {f.name for f in dataclasses.fields(HyperscaleConfig)}


def test_every_architecture_field_set_from_yaml_reaches_the_saved_model(tmp_path: Path):
    from hyperscale.modeling.model import HyperscaleModel
    from hyperscale.training.recipe import Recipe

    tree = yaml.safe_load(TINY.read_text())
    tree["model"].update(ARCH_VALUES)
    tree["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "all-arch.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))

    cfg = load_config(path)
    assert cfg.model.arch_dict() == ARCH_VALUES and cfg.model.arch == ArchConfig(**ARCH_VALUES)
    assert cfg.model.backbone == "preset:t5-tiny"

    # the recipe's own model construction (no data, no engine)
    recipe = Recipe(cfg)
    torch.manual_seed(0)
    recipe._setup_model()
    model = recipe.model
    assert model.config.arch == cfg.model.arch and model.config.tasks == cfg.data.tasks
    if model.config.method in ("hyperformer++", "hyperformer"):
        assert model.bank.task_embeddings.shape == (len(cfg.data.tasks), ARCH_VALUES["task_embedding_dim"])

    out = model.save_pretrained(tmp_path / "saved")
    saved = json.loads((Path(out) / CONFIG_NAME).read_text())
    assert {k: saved[k] for k in ARCH_FIELDS} == ARCH_VALUES
    again = HyperscaleConfig.from_dict(saved)
    assert again.arch == cfg.model.arch and again.tasks == cfg.data.tasks
    assert again.to_dict() == json.loads(json.dumps(model.config.to_dict()))  # JSON-normalized backbone config
    # and a whole model reloads from it with the same architecture
    reloaded = HyperscaleModel.from_pretrained(Path(out), backbone=str(tmp_path / "run" / "backbone"))
    assert reloaded.config.arch == cfg.model.arch


def test_architecture_is_validated_once_and_named_as_the_caller_knows_it():
    for bad, run_msg, model_msg in [
        (dict(method="lora"), "unknown model.method 'lora'; choose one of", "unknown method 'lora'; choose one of"),
        (dict(reduction_factor=0), "model.reduction_factor must be >= 1", "reduction_factor must be >= 1"),
        (dict(task_embedding_dim=0), "model.task_embedding_dim must be >= 1", "task_embedding_dim must be >= 1"),
        (dict(adapter_ln_eps=0.0), "model.adapter_ln_eps must be > 0", "adapter_ln_eps must be > 0"),
    ]:
        key, value = next(iter(bad.items()))
        with pytest.raises(ConfigError, match=run_msg):
            load_config(TINY, [f"model.{key}={value}"])
        with pytest.raises(ConfigError, match=run_msg):
            ModelConfig(**bad)
        with pytest.raises(ConfigError) as info:
            HyperscaleConfig(tasks=["rte"], **bad)
        assert str(info.value).startswith(model_msg)
        with pytest.raises(ConfigError, match=model_msg):
            ArchConfig(**bad)


def test_task_names_are_always_validated():
    # imported at module level (no silent skip when an import fails) and checked on every load, through the
    # registry of the built-in tasks and the config's own (data.task_specs / task_files)
    assert config_mod.registry_from_config is specs_mod.registry_from_config
    with pytest.raises(ConfigError, match="data.tasks: Unknown task 'nosuchtask'"):
        load_config(TINY, ["data.tasks=[rte,nosuchtask]"])


# ---------------------------------------------------------------------------------------------- immutable
def _sections(cfg: RunConfig):
    return [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]


def test_run_config_is_immutable():
    cfg = load_config(TINY)
    before = cfg.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.output_dir = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = cfg.train  # type: ignore[misc]
    sections = _sections(cfg)
    assert len(sections) == 10  # model data sampler train deepspeed eval checkpoint logging distributed transfer
    for section in sections:
        for f in dataclasses.fields(section):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(section, f.name, getattr(section, f.name))
    # its lists are its own: a caller's list changing later does not change the config
    tasks = ["rte", "cb"]
    data = dataclasses.replace(cfg.data, tasks=tasks)
    tasks.append("mrpc")
    assert data.tasks == ["rte", "cb"]
    assert cfg.to_dict() == before


def test_overrides_and_replace_make_new_configs():
    cfg = load_config(TINY, ["train.max_steps=7", "model.adapter_ln_eps=1e-6", "model.task_embedding_dim=16"])
    assert cfg.train.max_steps == 7 and cfg.model.adapter_ln_eps == pytest.approx(1e-6)
    assert cfg.model.task_embedding_dim == 16
    before = cfg.to_dict()
    new = cfg.with_overrides(["train.max_steps=9", "model.method=adapters", "data.tasks=[rte]"])
    assert new.train.max_steps == 9 and new.model.method == "adapters" and new.data.tasks == ["rte"]
    assert new.model.task_embedding_dim == 16  # the rest is kept
    assert cfg.to_dict() == before  # and the original is unchanged
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        cfg.with_overrides(["train.max_step=9"])
    with pytest.raises(ConfigError, match="train.max_steps must be positive"):
        cfg.with_overrides(["train.max_steps=0"])
    # dataclasses.replace validates the architecture again
    with pytest.raises(ConfigError, match="model.reduction_factor must be >= 1"):
        dataclasses.replace(cfg.model, reduction_factor=0)
    smaller = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, reduction_factor=4))
    assert smaller.model.reduction_factor == 4 and cfg.model.reduction_factor != 4


def test_override_into_an_empty_section(tmp_path: Path):
    path = tmp_path / "empty-section.yaml"
    path.write_text("model:\ntrain:\n  max_steps: 3\n")
    cfg = load_config(path, ["model.adapter_ln_eps=0.001"])
    assert cfg.model.adapter_ln_eps == pytest.approx(1e-3) and cfg.train.max_steps == 3


# ---------------------------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_with_a_valid_architecture(path: Path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    for key, value in (raw.get("model") or {}).items():  # the flat model section, as written
        assert getattr(cfg.model, key) == value, key
    model_cfg = HyperscaleConfig.from_arch(cfg.model, cfg.data.tasks)
    assert model_cfg.arch == cfg.model.arch


def test_fingerprint_of_older_runs_is_kept(tmp_path: Path):
    """A checkpoint written before adapter_ln_eps was a run-config key (its run_config.yaml lacks it) stays
    resumable with the default value, and names the key when this run changes it."""
    cfg = load_config(TINY)
    old = cfg.to_dict()
    del old["model"]["adapter_ln_eps"]
    saved = tmp_path / "run_config.yaml"
    saved.write_text(yaml.safe_dump(old))
    assert config_mod.resume_differences(saved, cfg) == []
    assert config_mod.resume_differences(saved, cfg.with_overrides(["model.adapter_ln_eps=0.001"])) == [
        "model.adapter_ln_eps: 1e-05 in the checkpoint, 0.001 now"]
    assert cfg.with_overrides(["model.adapter_ln_eps=0.001"]).model_fingerprint() != cfg.model_fingerprint()
