"""Every default is written once (issue 21): in the config dataclasses (``hyperscale/training/config.py``, the
architecture's in ``hyperscale/modeling/config.py``, the benchmark's in ``hyperscale/bench/settings.py``). The
embedded default run (``configs/default.yaml``) writes only what it sets differently, and the command lines read
their defaults from the dataclasses instead of restating them."""
from __future__ import annotations

import argparse
import dataclasses

import yaml

from hyperscale import bench
from hyperscale.bench.settings import GPU_DEFAULTS
from hyperscale.cli.params import add_parser as add_params_parser
from hyperscale.data.sample import SAMPLE_TASKS
from hyperscale.modeling.config import ARCH_DEFAULTS, ArchConfig
from hyperscale.modeling.model import HyperscaleModel
from hyperscale.training.config import DEFAULT_CONFIG, RunConfig, load_config


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(_leaves(value, path + ".") if isinstance(value, dict) else {path: value})
    return out


def test_the_default_run_writes_only_what_it_changes():
    written = _leaves(yaml.safe_load(DEFAULT_CONFIG.read_text()) or {})
    defaults = _leaves(RunConfig().to_dict())
    assert written, "configs/default.yaml sets nothing: then it is not needed"
    loaded = _leaves(load_config(None).to_dict())  # the written values as the loader reads them (3.0e-3 a float)
    restated = {k: v for k, v in written.items() if loaded[k] == defaults[k]}
    assert not restated, (f"configs/default.yaml restates defaults of hyperscale/training/config.py: {restated}; "
                          "write a default once, in the dataclass")
    # and the embedded run is exactly the dataclasses' defaults with those values changed
    changed = {k: v for k, v in loaded.items() if v != defaults[k]}
    assert set(changed) == set(written), (changed, written)


def test_the_default_task_list_is_the_shipped_sample():
    assert RunConfig().data.tasks == list(SAMPLE_TASKS) == list(bench.DEFAULT_TASKS)
    assert bench.BenchSettings().tasks == list(SAMPLE_TASKS)


def test_architecture_defaults_come_from_the_schema():
    fields = {f.name: f.default for f in dataclasses.fields(ArchConfig)}
    assert ARCH_DEFAULTS == fields
    assert bench.BenchSettings().reduction_factor == fields["reduction_factor"]
    model = HyperscaleModel.from_backbone("preset:t5-tiny", ["rte"])  # every architecture field left out
    assert model.config.arch == ArchConfig()
    parser = argparse.ArgumentParser()
    params = add_params_parser(parser.add_subparsers())
    args = params.parse_args([])
    assert (args.method, args.reduction_factor) == (fields["method"], fields["reduction_factor"])


def test_bench_command_line_defaults_are_the_settings_defaults():
    parser = bench.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--device", "cpu"])
    on_cpu = bench.settings_from_args(args)
    expected = bench.BenchSettings(configs=on_cpu.configs)
    assert on_cpu == expected, [f.name for f in dataclasses.fields(expected)
                                if getattr(on_cpu, f.name) != getattr(expected, f.name)]
    assert set(GPU_DEFAULTS) <= {f.name for f in dataclasses.fields(bench.BenchSettings)}
