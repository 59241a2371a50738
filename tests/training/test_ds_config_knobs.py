"""deepspeed.allgather_bucket_size, reduce_bucket_size and overlap_comm reach the DeepSpeed config the trainer hands
to ``deepspeed.initialize`` (``build_engine`` passes ``build_ds_config``'s dict as it is). They were once applied with
setdefault under templates that already set them, so a user's value was silently ignored."""
from __future__ import annotations

import dataclasses

import pytest

from helpers import TINY
from hyperscale.errors import ConfigError
from hyperscale.training.config import load_config
from hyperscale.training.ds_config import build_ds_config

KNOBS = {"allgather_bucket_size": 12_345_678, "reduce_bucket_size": 23_456_789, "overlap_comm": True}
USED = {1: set(KNOBS), 2: set(KNOBS), 3: {"reduce_bucket_size", "overlap_comm"}}


def cfg_for(stage: int, **knobs):
    overrides = ["deepspeed.zero_stage=%d" % stage, "train.global_batch_size=2", "train.micro_batch_size=2"]
    return load_config(TINY, overrides + [f"deepspeed.{k}={v}" for k, v in knobs.items()])


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_each_knob_lands_in_the_deepspeed_config(stage, knob):
    ds = build_ds_config(cfg_for(stage, **{knob: KNOBS[knob]}), world_size=1)
    if knob in USED[stage]:
        assert ds["zero_optimization"][knob] == KNOBS[knob]
    else:
        assert knob not in ds["zero_optimization"]


def test_a_users_json_that_disagrees_is_refused(tmp_path):
    import json

    from hyperscale.training.ds_config import template_path

    cfg = cfg_for(2)
    ds = json.loads(template_path(cfg).read_text())
    ds["zero_optimization"]["reduce_bucket_size"] = 1000
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    cfg = dataclasses.replace(cfg, deepspeed=dataclasses.replace(cfg.deepspeed, config=str(path)))
    with pytest.raises(ConfigError, match="reduce_bucket_size"):
        build_ds_config(cfg, world_size=1)
