"""`hyperscale params`: the parameter report without allocating weights."""
from __future__ import annotations

import argparse
import json

import pytest

from hyperscale.cli import main
from hyperscale.cli.params import add_parser, parse_tasks, run
from modeling_helpers import tiny_backbone


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hyperscale")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["params", *argv])


def test_t5_base_table(capsys):
    args = _args("--backbone", "t5-base", "--method", "hyperformer++", "--tasks", "8")
    assert args.func is run
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "5,211,056" in out and "0.29 %" in out
    assert "222,903,552" in out and "47,616" in out and "2,581,464" in out
    lines = {line.rsplit("  ", 1)[0].strip(): line.rsplit("  ", 1)[1].strip() for line in out.splitlines()
             if "  " in line and not line.startswith("-")}
    assert lines["trainable (total)"] == "5,211,056"
    assert lines["task embeddings"] == "512"
    assert lines["trainable per task (% of backbone)"] == "0.29 %"


def test_json_and_reduction_factor(capsys):
    assert run(_args("--backbone", "preset:t5-base", "--tasks", "8", "--reduction-factor", "32", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable"] == 5_211_056 and report["backbone"] == 222_903_552
    assert round(report["percent_per_task"], 2) == 0.29 and report["tasks"] == 8 and report["bottleneck"] == 24
    assert run(_args("--backbone", "t5-small", "--tasks", "rte,sst2,mrpc,stsb,qqp,mnli,qnli,cola", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["trainable"] == 2_415_776
    assert main(["params", "--backbone", "t5-small", "--method", "adapters", "--tasks", "1", "--reduction-factor",
                 "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "adapters" and report["bottleneck"] == 32


def test_local_directory(tmp_path, capsys):
    for version in ("v1.0", "v1.1"):
        bb = tiny_backbone(version)
        bb.config.save_pretrained(tmp_path / version)  # only config.json: nothing is loaded
        assert run(_args("--backbone", str(tmp_path / version), "--method", "finetune", "--json")) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["backbone"] == sum(p.numel() for p in bb.parameters())  # v1.1: its own LM head counted


def test_parse_tasks():
    assert parse_tasks("3") == ["task0", "task1", "task2"]
    assert parse_tasks("rte, sst2") == ["rte", "sst2"]
    with pytest.raises(ValueError):
        parse_tasks("0")
    with pytest.raises(ValueError):
        parse_tasks(" , ")


def test_errors(capsys):
    assert main(["params", "--backbone", "t5-nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hyperscale: error: ") and err.count("\n") == 1
    assert "neither a preset nor a local model directory" in err and "t5-base" in err
    assert main(["params", "--tasks", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["params", "--tasks", "rte,rte"]) == 2
    assert "unique" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args("--method", "lora")
