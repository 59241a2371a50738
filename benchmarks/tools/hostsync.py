"""Count the device->host reads of the trainer's training steps, by call site.

    python benchmarks/tools/hostsync.py [--steps 20] [--stage 2] [--precision bf16] [--micro 4]

Runs the real recipe (configs/tiny-cpu.yaml, one process, world size 1) for ``--steps`` steps with eval and
checkpoints switched off, under a ``TorchFunctionMode`` that records every call that copies a tensor's value to
the host (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``/``float``/``int`` of a tensor)
or that needs the device to finish before its output size is known (``nonzero``, ``masked_select``,
``unique``, ``repeat_interleave``). On a GPU each such call on a CUDA tensor blocks the host until the device
has caught up. On this CPU run every tensor lives on the host, so the counts say where a read *would* sync:
the table gives each call site, and whether its tensor lives on the training device in a GPU run is read off
that line of code (see benchmarks/NOTES.md). ``.to(...)`` is not counted: here it cannot tell a host-to-device
copy (no sync) from a device-to-host one. On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` gives the
same list directly.

Works on the code before issue 9 too (Recipe in ``hyperscale.train``), for the before/after comparison.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import traceback
from pathlib import Path

from torch.overrides import TorchFunctionMode

REPO = Path(__file__).resolve().parents[2]
READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}
SIZE_SYNCS = {"nonzero", "masked_select", "unique", "repeat_interleave", "argwhere", "nonzero_static"}


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter = collections.Counter()
        self.active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if self.active and (name in READS or name in SIZE_SYNCS):
            self.sites[(name, self._site())] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _site() -> str:
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = frame.filename
            if "hostsync.py" in path or "/torch/overrides.py" in path or "/torch/_tensor.py" in path:
                continue
            short = path.split("site-packages/")[-1] if "site-packages/" in path else os.path.relpath(path, REPO)
            return f"{short}:{frame.lineno} ({frame.line.strip()[:70] if frame.line else ''})"
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--micro", type=int, default=4, help="micro-batch size (global batch 8: 2 micro-batches/step)")
    args = p.parse_args(argv)
    os.environ.update(DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), OMP_NUM_THREADS="1")
    sys.path.insert(0, str(REPO))
    try:
        from hyperscale.training.recipe import Recipe
    except ImportError:  # before issue 9
        from hyperscale.train import Recipe
    from hyperscale.training.config import load_config

    out = tempfile.mkdtemp(prefix="hostsync-")
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml",
                      [f"output_dir={out}", f"train.max_steps={args.steps + 1}", "checkpoint.every_steps=0",
                       f"deepspeed.zero_stage={args.stage}", f"train.precision={args.precision}",
                       f"train.micro_batch_size={args.micro}", "logging.every_steps=10", "logging.tensorboard=false"])
    recipe = Recipe(cfg)
    recipe.setup()
    mode = HostReads()
    # count the training steps only: no evaluation, no checkpoint (both run at the last step)
    recipe._eval_and_track = lambda final: False
    recipe.save = lambda is_best=False: None
    step_fn = recipe.engine.step
    seen = {"n": 0}

    def counted_step(*a, **kw):  # start counting after the first optimizer step (one-time set-up reads)
        r = step_fn(*a, **kw)
        seen["n"] += 1  # engine.step runs once per micro-batch
        mode.active = seen["n"] >= recipe.ds_config["gradient_accumulation_steps"]
        return r

    recipe.engine.step = counted_step
    with mode:
        recipe.train()
    mode.active = False
    steps = args.steps
    total = sum(mode.sites.values())
    print(f"{steps} steps (stage {args.stage}, {args.precision}, {recipe.ds_config['gradient_accumulation_steps']} "
          f"micro-batches/step): {total} host reads, {total / steps:.2f} per step")
    for (name, site), n in sorted(mode.sites.items(), key=lambda kv: -kv[1]):
        print(f"  {n / steps:6.2f}/step  {name:<18} {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
