"""Share real training runs between the trainer tests (used by conftest.py and the tests); launching, paths and
the launched environment come from tests/helpers.py."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from helpers import TINY, launch, log_tail

DRIVER = Path(__file__).resolve().parent / "recipe_driver.py"


@dataclass
class Run:
    name: str
    dir: Path
    stage: int
    precision: str
    nproc: int
    probe: Optional[Path] = None
    log: Optional[Path] = None

    def train_log(self) -> list[dict]:
        return [json.loads(ln) for ln in (self.dir / "train_log.jsonl").read_text().splitlines() if ln.strip()]

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.train_log()}

    @property
    def ckpt_root(self) -> Path:
        return self.dir / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.ckpt_root / f"step-{step:08d}"


@dataclass
class Spec:
    stage: int
    precision: str
    nproc: int = 2
    probe: bool = False  # launch through the driver (dumps the engine's outputs at the end)
    resume_of: Optional[str] = None  # a run to cut at RESUME_STEP and continue with --resume auto
    extra: list = field(default_factory=list)


COMPILED = ["train.compile=true", "train.compile_backend=aot_eager"]
RESUME_STEP = 4  # tiny-cpu.yaml checkpoints every 4 of 12 steps
SPECS: dict[str, Spec] = {
    # bf16 (the default precision) under ZeRO-2; it also runs the task-sync check
    "bf16-z2": Spec(2, "bf16", extra=["distributed.check_task_sync=true"]),
    # fp32, exact comparisons: export vs engine, resume vs uninterrupted
    "fp32-z0": Spec(0, "fp32", probe=True),
    "fp32-z2": Spec(2, "fp32", probe=True),
    # ZeRO-3 on 2 ranks also evaluates by generation (synced_gpus), 15 test examples: uneven, padded shards
    "fp32-z3": Spec(3, "fp32", probe=True, extra=["eval.mode=generate", "data.n_test=15"]),
    "fp32-z2-resumed": Spec(2, "fp32", resume_of="fp32-z2"),
    # micro-batch 4 on one rank: 2 accumulation steps (auto would take the whole per-rank batch of 8)
    "fp32-z0-1p": Spec(0, "fp32", nproc=1, extra=["train.micro_batch_size=4"]),
    "fp32-z0-1p-resumed": Spec(0, "fp32", nproc=1, resume_of="fp32-z0-1p", extra=["train.micro_batch_size=4"]),
    # torch.compile (aot_eager: Dynamo and AOTAutograd as inductor sees them, without its minute of codegen)
    "fp32-z2-compiled": Spec(2, "fp32", extra=COMPILED),
    "fp32-z2-compiled-resumed": Spec(2, "fp32", resume_of="fp32-z2-compiled", extra=COMPILED),
    # ZeRO-3 with the backbone loaded straight into shards; bf16 ZeRO-1 (DeepSpeed's BF16_Optimizer files)
    "fp32-z3-sharded": Spec(3, "fp32", extra=["deepspeed.build_sharded=true"]),
    "bf16-z1": Spec(1, "bf16"),
}


def cut_run(src: Path, dst: Path, step: int) -> None:
    """``dst`` = ``src`` as it stood when it crashed some time after checkpointing ``step``: later
    checkpoints gone, ``latest`` at ``step``; the step log and TensorBoard events still hold the later
    steps (the resumed run must drop and purge them)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("export*", "results.json", "*.log"))
    root = dst / "checkpoints"
    tag = f"step-{step:08d}"
    assert (root / tag / "COMPLETE").is_file(), f"{src} has no complete checkpoint at step {step}"
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and d.name > tag:
            shutil.rmtree(d)
    (root / "latest").write_text(tag + "\n")
    best = root / "best"
    if best.is_file() and best.read_text().strip() > tag:
        best.unlink()


class Runs:
    def __init__(self, base: Path):
        self.base = base
        self.done: dict[str, Run] = {}
        self.failed: dict[str, str] = {}

    def __call__(self, name: str) -> Run:
        if name in self.failed:
            pytest.fail(f"run {name} failed earlier:\n{self.failed[name]}", pytrace=False)
        if name not in self.done:
            try:
                self.done[name] = self._launch(name)
            except Exception as e:  # remember, so dependent tests fail fast
                self.failed[name] = str(e)
                raise
        return self.done[name]

    def _launch(self, name: str) -> Run:
        spec = SPECS[name]
        run = Run(name, self.base / name, spec.stage, spec.precision, spec.nproc, log=self.base / f"{name}.log")
        args = [str(TINY), f"output_dir={run.dir}", f"deepspeed.zero_stage={spec.stage}",
                f"train.precision={spec.precision}", *spec.extra]
        target = ["-m", "hyperscale.train"]
        if spec.resume_of is not None:
            cut_run(self(spec.resume_of).dir, run.dir, RESUME_STEP)
            args.append("--resume=auto")
        if spec.probe:
            run.probe = self.base / f"{name}.probe.pt"
            target = [str(DRIVER)]
            args.append(f"--probe={run.probe}")
        proc = launch(target, args, spec.nproc, run.log, preloaded=True)  # what a run does; launchers: elsewhere
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}; log {run.log}:\n{log_tail(run.log)}")
        return run
