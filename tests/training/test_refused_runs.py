"""A refused run leaves nothing behind: a new output_dir stays absent, an existing one (a finished run's) keeps every
byte, its lock file included. One plain process runs every case through ``hyperscale.train.main`` in turn (as a
Python caller would run several), so a case also proves that the one before it left no process group behind."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from helpers import TINY, launch, log_tail

pytestmark = pytest.mark.distributed

DRIVER = textwrap.dedent("""
    import json, shutil, sys
    from collections import namedtuple
    from pathlib import Path
    from hyperscale.train import main

    cases, out = json.loads(Path(sys.argv[1]).read_text()), {}
    real_usage = shutil.disk_usage
    for name, argv, disk_free in cases:
        if disk_free is not None:  # a disk too small for the run: what shutil reports, the rest is real
            usage = namedtuple("usage", "total used free")
            shutil.disk_usage = lambda p, _f=disk_free: usage(_f * 2, _f, _f)
        try:
            out[name] = main(argv)
        finally:
            shutil.disk_usage = real_usage
        print(f"CASE {name} rc={out[name]}", flush=True)
    Path(sys.argv[2]).write_text(json.dumps(out))
""")


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_refused_runs_leave_nothing_behind(tmp_path: Path):
    new = tmp_path / "new"  # the parent of every new output_dir: empty afterwards
    finished = tmp_path / "finished"  # what a finished run's directory holds for the refusal check
    finished.mkdir()
    (finished / "train_log.jsonl").write_text('{"step": 1}\n')
    (finished / ".hyperscale.lock").write_text("pid 123 on node7, since 2026-12-01 10:00:00\n")
    before = _tree(finished)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ not json")
    base = [str(TINY), "train.max_steps=1", "deepspeed.zero_stage=0"]
    cases = [
        ("backbone", base + [f"output_dir={new}/a/deep", f"model.backbone={tmp_path}/no-backbone"], None),
        ("data", base + [f"output_dir={new}/b", f"data.data_dir={tmp_path}/no-data"], None),
        ("tokenizer", base + [f"output_dir={new}/c", f"data.tokenizer={tmp_path}/no-tokenizer"], None),
        ("ds-json", base + [f"output_dir={new}/d", f"deepspeed.config={bad_json}"], None),
        ("disk", base + [f"output_dir={new}/e"], 1 << 20),  # 1 MiB free: the preset backbone does not fit
        ("finished", base + [f"output_dir={finished}"], None),
    ]
    spec, result, log = tmp_path / "cases.json", tmp_path / "rc.json", tmp_path / "driver.log"
    spec.write_text(json.dumps(cases))
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = launch([str(script)], [str(spec), str(result)], 1, log, timeout=300, preloaded=True)
    assert proc.returncode == 0, log_tail(log)
    text = log.read_text()
    assert json.loads(result.read_text()) == {name: 2 for name, _, _ in cases}, log_tail(log)
    errors = [ln for ln in text.splitlines() if ln.startswith("hyperscale: error:")]
    assert len(errors) == len(cases), text[-4000:]
    for needle, line in zip(["no-backbone", "no-data", "no-tokenizer", "bad.json", "MiB free", "already holds a run"],
                            errors):
        assert needle in line, line
    assert "Traceback" not in text, text[-4000:]
    assert not new.exists() or not any(new.iterdir()), sorted(str(p) for p in new.rglob("*"))
    assert _tree(finished) == before  # the finished run's lock file keeps its text
