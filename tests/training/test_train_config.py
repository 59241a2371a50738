"""Run configs and DeepSpeed configs: every shipped file validates; bad configs and overrides fail
with messages that say how to fix them. In-process, no DeepSpeed engine."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from helpers import REPO, TINY
from hyperscale.training.config import CONFIG_DIR, ConfigError, RunConfig, load_config
from hyperscale.training.ds_config import DS_CONFIG_DIR, build_ds_config, template_path
from hyperscale.training.geometry import batch_geometry


SHIPPED_CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
SHIPPED_DS_CONFIGS = sorted(DS_CONFIG_DIR.glob("*.json"))


def _autos(node, where=""):
    """Paths of every value still "auto" in a DeepSpeed config."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _autos(v, f"{where}.{k}" if where else k)]
    return [where] if node == "auto" else []


def test_top_level_config_dirs_are_the_packaged_ones():
    assert {p.name for p in (REPO / "configs").glob("*.yaml")} == {p.name for p in SHIPPED_CONFIGS}
    assert {p.name for p in (REPO / "ds_configs").glob("*.json")} == {p.name for p in SHIPPED_DS_CONFIGS}
    assert {"default.yaml", "tiny-cpu.yaml"} <= {p.name for p in SHIPPED_CONFIGS}


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    # the resolved config round-trips through its YAML form (what the run directory stores)
    again = path.parent / "_roundtrip.yaml"
    try:
        again.write_text(cfg.to_yaml())
        assert load_config(again).to_dict() == cfg.to_dict()
    finally:
        again.unlink(missing_ok=True)
    # its DeepSpeed config builds for 1 and 2 ranks where the global batch allows it
    for world in (1, 2):
        if cfg.deepspeed.zero_stage == "auto":  # resolved by the trainer from the memory plan: any stage here
            cfg = cfg.with_overrides(["deepspeed.zero_stage=3" if cfg.deepspeed.build_sharded else "deepspeed.zero_stage=2"])
        micro = cfg.train.micro_batch_size
        if cfg.train.global_batch_size % ((1 if micro == "auto" else micro) * world) == 0:
            ds = build_ds_config(cfg, world)
            assert ds["train_batch_size"] == cfg.train.global_batch_size
            assert not _autos(ds)


def test_default_config_is_the_embedded_default():
    assert load_config(None).to_dict() == load_config(CONFIG_DIR / "default.yaml").to_dict()
    assert load_config(None).train.precision == "bf16"


def _matching_overrides(name: str) -> list[str]:
    m = re.fullmatch(r"zero(\d)(_offload)?_(bf16|fp16|fp32)\.json", name)
    assert m, f"unexpected DeepSpeed config name {name}"
    stage, offload, precision = int(m.group(1)), bool(m.group(2)), m.group(3)
    out = [f"deepspeed.zero_stage={stage}", f"deepspeed.offload={str(offload).lower()}", f"train.precision={precision}"]
    if precision == "fp16":
        out.append("train.allow_fp16=true")
    return out


@pytest.mark.parametrize("path", SHIPPED_DS_CONFIGS, ids=lambda p: p.name)
def test_shipped_ds_config_is_accepted_with_a_matching_run_config(path: Path):
    raw = json.loads(path.read_text())
    assert isinstance(raw, dict)
    overrides = _matching_overrides(path.name)
    # the template the trainer picks for this run config is this very file
    assert template_path(load_config(TINY, overrides)) == path
    # and the same file given explicitly as a user's DeepSpeed JSON is accepted and filled
    cfg = load_config(TINY, overrides + [f"deepspeed.config={path}"])
    ds = build_ds_config(cfg, world_size=2)
    t = dataclasses.replace(cfg.train, micro_batch_size=batch_geometry(cfg, 2).micro_batch_size)
    assert not _autos(ds), f"{path.name}: left 'auto' at {_autos(ds)}"
    assert ds["train_batch_size"] == t.global_batch_size
    assert ds["train_micro_batch_size_per_gpu"] == t.micro_batch_size
    assert ds["gradient_accumulation_steps"] * t.micro_batch_size * 2 == t.global_batch_size
    assert ds["gradient_clipping"] == t.grad_clip
    assert ds["optimizer"]["params"]["lr"] == t.lr
    assert ds["scheduler"]["params"]["total_num_steps"] == t.max_steps
    assert ds["zero_optimization"]["stage"] == cfg.deepspeed.zero_stage
    assert ds.get("bf16", {}).get("enabled", False) == (t.precision == "bf16")
    assert ds.get("fp16", {}).get("enabled", False) == (t.precision == "fp16")
    if t.precision == "bf16" and cfg.deepspeed.zero_stage > 0:  # gradients accumulate in fp32 under bf16
        assert ds["data_types"]["grad_accum_dtype"] == "fp32"
    if t.precision == "bf16" and cfg.deepspeed.zero_stage == 0:  # DeepSpeed refuses fp32 accumulation there
        assert "grad_accum_dtype" not in ds.get("data_types", {})
    if cfg.deepspeed.offload:
        assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_global_batch_is_fixed_across_world_sizes():
    cfg = load_config(TINY, ["train.global_batch_size=16", "train.micro_batch_size=2"])
    for world, accum in ((1, 8), (2, 4), (4, 2), (8, 1)):
        ds = build_ds_config(cfg, world)
        assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == accum


# ---------------------------------------------------------------------------------------------- errors
def _err(overrides=None, path=TINY) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    return str(info.value)


def test_unknown_key_in_file_has_did_you_mean(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("train:\n  max_steps:", "train:\n  max_step:"))
    msg = _err(path=bad)
    assert "train.max_step" in msg and "did you mean 'max_steps'" in msg
    bad.write_text(TINY.read_text().replace("deepspeed:\n", "deepseed:\n"))
    msg = _err(path=bad)
    assert "deepseed" in msg and "did you mean 'deepspeed'" in msg


@pytest.mark.parametrize("override", ["train.max_steps", "=3", "train.max_steps=[1,"])
def test_bad_override_syntax(override: str):
    msg = _err([override])
    assert "bad override" in msg and "key.sub=value" in msg or "not valid YAML" in msg


def test_override_of_unknown_key():
    msg = _err(["train.max_step=5"])
    assert "unknown override key 'train.max_step'" in msg and "did you mean 'max_steps'" in msg
    msg = _err(["trian.max_steps=5"])
    assert "did you mean 'train'" in msg
    msg = _err(["train=5"])
    assert "names a section" in msg
    msg = _err(["train.lr.value=5"])
    assert "is a value, not a section" in msg


def test_overrides_apply():
    cfg = load_config(TINY, ["train.max_steps=40", "data.tasks=[rte,mrpc]", "model.dropout=0.1",
                             "deepspeed.zero_stage=3", "train.lr=1e-4"])
    assert cfg.train.max_steps == 40 and cfg.data.tasks == ["rte", "mrpc"] and cfg.model.dropout == 0.1
    assert cfg.deepspeed.zero_stage == 3 and cfg.train.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("override, expect", [
    ("train.max_steps=abc", "train.max_steps must be an integer"),
    ("train.max_steps=1.5", "train.max_steps must be an integer"),
    ("train.lr=fast", "train.lr must be a number"),
    ("model.train_layer_norms=maybe", "must be true or false"),
    ("data.tasks=5", "data.tasks must be a list"),
    ("train.precision=fp8", "train.precision must be bf16, fp32 or fp16"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage must be 0-3"),
    ("data.tasks=[rte,nosuchtask]", "data.tasks"),
    ("model.method=magic", "model.method"),
    ("train.max_steps=0", "train.max_steps must be positive"),
])
def test_wrong_types_and_values(override: str, expect: str):
    assert expect in _err([override])


def test_global_batch_not_divisible():
    assert "multiple of train.micro_batch_size" in _err(["train.global_batch_size=8", "train.micro_batch_size=3"])
    cfg = load_config(TINY, ["train.global_batch_size=8", "train.micro_batch_size=4"])
    with pytest.raises(ConfigError, match="not divisible by micro_batch_size x world size"):
        build_ds_config(cfg, world_size=4)


def test_fp16_needs_allow_fp16():
    msg = _err(["train.precision=fp16"])
    assert "allow_fp16" in msg and "bf16" in msg
    cfg = load_config(TINY, ["train.precision=fp16", "train.allow_fp16=true"])
    assert build_ds_config(cfg, 2)["fp16"]["enabled"] is True


def _user_ds(tmp_path: Path, edit) -> Path:
    ds = json.loads((DS_CONFIG_DIR / "zero2_fp32.json").read_text())
    edit(ds)
    path = tmp_path / "user_ds.json"
    path.write_text(json.dumps(ds))
    return path


@pytest.mark.parametrize("edit, expect", [
    (lambda d: d.update(train_batch_size=64), "'train_batch_size' is 64 but the run config implies 8"),
    (lambda d: d.update(gradient_accumulation_steps=4), "gradient_accumulation_steps"),
    (lambda d: d["optimizer"]["params"].update(lr=0.1), "optimizer.params.lr"),
    (lambda d: d["zero_optimization"].update(stage=3), "zero_optimization.stage"),
    (lambda d: d.update(bf16={"enabled": True}), "enables bf16 but train.precision=fp32"),
    (lambda d: d["optimizer"].update(type="SGD"), "not supported"),
])
def test_user_ds_json_contradicting_the_run_config(tmp_path: Path, edit, expect: str):
    path = _user_ds(tmp_path, edit)
    cfg = load_config(TINY, ["deepspeed.zero_stage=2", "train.precision=fp32", f"deepspeed.config={path}"])
    with pytest.raises(ConfigError) as info:
        build_ds_config(cfg, 2)
    assert expect in str(info.value)


def test_user_ds_json_agreeing_with_the_run_config_is_accepted(tmp_path: Path):
    path = _user_ds(tmp_path, lambda d: d.update(train_batch_size=8, gradient_clipping=1.0))
    cfg = load_config(TINY, ["deepspeed.zero_stage=2", "train.precision=fp32", f"deepspeed.config={path}"])
    assert build_ds_config(cfg, 2)["train_batch_size"] == 8


def test_user_ds_json_missing_or_invalid(tmp_path: Path):
    cfg = load_config(TINY, [f"deepspeed.config={tmp_path / 'nope.json'}"])
    with pytest.raises(ConfigError, match="not found"):
        build_ds_config(cfg, 2)
    (tmp_path / "broken.json").write_text("{not json")
    cfg = load_config(TINY, [f"deepspeed.config={tmp_path / 'broken.json'}"])
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_ds_config(cfg, 2)


def test_missing_config_file_lists_shipped_configs(tmp_path: Path):
    msg = _err(path=tmp_path / "nope.yaml")
    assert "not found" in msg and "tiny-cpu.yaml" in msg


def test_model_fingerprint_tracks_what_weights_depend_on():
    base = load_config(TINY).model_fingerprint()
    assert load_config(TINY, ["model.dropout=0.3", "train.max_steps=99"]).model_fingerprint() == base
    assert load_config(TINY, ["data.tasks=[rte,mrpc]"]).model_fingerprint() != base
    assert load_config(TINY, ["model.reduction_factor=4"]).model_fingerprint() != base
