"""Train many configurations of the tiny CPU recipe one after another in the same ranks (tests/training/
test_train_matrix.py): every ZeRO stage x precision x backbone source, 2 steps each.

    torchrun --standalone --nproc_per_node 2 tests/training/matrix_driver.py --base DIR --summary OUT.json \
        --source dir_fp32=PATH --source dir_bf16=PATH z0-fp32-preset z3-bf16-sharded-dir_bf16 ...

A configuration id is ``z{stage}-{precision}[-sharded]-{source}``; a source is ``preset`` (``preset:t5-tiny``,
which the trainer saves into RUN/backbone itself) or a name given with ``--source NAME=DIR`` (a backbone
directory written by ``save_pretrained``). Each configuration runs as ``python -m hyperscale.train`` runs it
(``Recipe.setup / train / finish``) with ``output_dir=BASE/ID``, 2 steps, a checkpoint at step 2 and a small
evaluation, and records: ok or the exception (phase, type, message), the step losses (RUN/train_log.jsonl), whether
the export was written, the dtypes the engine holds its frozen and trainable weights in, whether every tensor of the
source equals the engine's backbone weight of that name (tied aliases included) rounded to the engine's dtype after
setup (``loaded_as_source``), and whether every frozen one still does after training (``frozen_unchanged``;
gathered under ZeRO-3, before the export).

Failures: every rank reports each configuration's outcome through the process group's key-value store (not a
collective, so a rank that failed where the other did not cannot mismatch a collective sequence). When both ranks
fail, both left the configuration and the launch goes on with the next one. When one rank fails and the other does
not, or a rank waits AGREE_TIMEOUT_S for the other's report in vain (the other sits in a collective that will never
complete; the waiting rank marks the configuration abandoned in the store, so that the other, once its collective
breaks, does not take the failure for a shared one), the configuration is recorded as desynchronised and the launch
ends (exit 3, torchrun stops the other rank): the test launches the configurations that are left again. Rank 0
rewrites ``--summary`` after every configuration, with the one in progress (``current``, ``started``), so that the
test can stop a launch that hangs. ``HYPERSCALE_MATRIX_FAULT=ID:RANK:PHASE`` injects a failure (checks of this
driver).

Between configurations: the engine is destroyed, the run lock, logger and signal handlers released, and
``torch.nn.functional.linear`` restored (ZeRO-3 replaces it process-wide, tests/conftest.py).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny-cpu.yaml"
PRESET = "preset:t5-tiny"
_TORCH_LINEAR = torch.nn.functional.linear
AGREE_TIMEOUT_S = 60  # how long a rank waits for the other's outcome of a configuration
EXIT_DESYNC = 3
# checks of the driver itself: "ID:RANK:PHASE" makes that rank raise when configuration ID enters PHASE
# (setup, train, check, finish), e.g. "z1-fp32-preset:1:train" (rank 1 only: the ranks desynchronise)
FAULT_ENV = "HYPERSCALE_MATRIX_FAULT"


class InjectedFault(RuntimeError):
    pass


def enter(out: dict, phase: str, cid: str) -> None:
    out["phase"] = phase
    fault = os.environ.get(FAULT_ENV, "")
    if fault and fault == f"{cid}:{os.environ.get('RANK', '0')}:{phase}":
        raise InjectedFault(f"{FAULT_ENV}={fault}")


def parse_id(cid: str) -> dict:
    """``z3-bf16-sharded-dir_bf16`` -> {stage: 3, precision: bf16, sharded: True, source: dir_bf16}."""
    parts = cid.split("-")
    if len(parts) not in (3, 4) or not parts[0].startswith("z") or (len(parts) == 4 and parts[2] != "sharded"):
        raise ValueError(f"bad configuration id {cid!r}")
    return {"stage": int(parts[0][1:]), "precision": parts[1], "sharded": len(parts) == 4, "source": parts[-1]}


def overrides_for(cid: str, base: Path, sources: dict[str, str]) -> list[str]:
    c = parse_id(cid)
    backbone = PRESET if c["source"] == "preset" else sources[c["source"]]
    return [f"output_dir={base / cid}", f"model.backbone={backbone}", f"deepspeed.zero_stage={c['stage']}",
            f"train.precision={c['precision']}", f"deepspeed.build_sharded={str(c['sharded']).lower()}",
            "train.max_steps=2", "train.warmup_steps=1", "checkpoint.every_steps=2", "logging.every_steps=2",
            "data.n_val=4", "data.n_test=4", "eval.splits=[validation]", "train.cpu_threads=1",
            "logging.tensorboard=false"]


# ------------------------------------------------------------------------------------------ frozen weights
def read_source(directory: Path) -> dict[str, torch.Tensor]:
    """A save_pretrained directory's tensors (one file or an index of shards)."""
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(directory / shard)))
    return out


def compare_to_source(recipe: Any, source: dict[str, torch.Tensor], frozen_only: bool) -> dict:
    """Every tensor of the source against the engine's backbone parameter of that name (tied aliases included, so
    a head tied where the source has its own shows), rounded to the engine weight's dtype; ``frozen_only``: only
    the parameters that do not train. Under ZeRO-3 the parameters are gathered: every rank calls this."""
    module = recipe.engine.module
    named = dict(module.backbone.named_parameters(remove_duplicate=False))
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in named.values()):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(module.backbone.parameters()), modifier_rank=None)
    differ, missing, compared = [], [], 0
    with gather:
        for name, ref in sorted(source.items()):
            p = named.get(name)
            if p is None:
                missing.append(name)
                continue
            if frozen_only and p.requires_grad:
                continue
            w = p.detach().cpu()
            compared += 1
            if w.shape != ref.shape or not torch.equal(w, ref.to(w.dtype)):
                differ.append(name)
    return {"same": not differ and not missing and compared > 0, "differ": differ[:10], "missing": missing[:10],
            "compared": compared}


def engine_dtypes(recipe: Any) -> dict:
    module = recipe.engine.module
    return {"frozen_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters()
                                     if not p.requires_grad}),
            "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters()
                                        if p.requires_grad})}


# -------------------------------------------------------------------------------------------- one run
def run_one(cid: str, base: Path, sources: dict[str, str]) -> dict:
    from hyperscale.training.config import load_config
    from hyperscale.training.recipe import Recipe

    out: dict = {"ok": False, "phase": "config"}
    recipe: Optional[Recipe] = None
    try:
        cfg = load_config(TINY, overrides_for(cid, base, sources))
        recipe = Recipe(cfg)
        enter(out, "setup", cid)
        t = time.time()
        recipe.setup()
        src_name = parse_id(cid)["source"]
        source = read_source(Path(sources[src_name]) if src_name != "preset" else recipe.output_dir / "backbone")
        loaded = compare_to_source(recipe, source, frozen_only=False)
        out.update(engine_dtypes(recipe), loaded_as_source=loaded["same"], loaded_differ=loaded["differ"],
                   loaded_missing=loaded["missing"])
        times = {"setup": time.time() - t}
        enter(out, "train", cid)
        t = time.time()
        recipe.train()
        times["train"] = time.time() - t
        enter(out, "check", cid)
        frozen = compare_to_source(recipe, source, frozen_only=True)
        out.update(frozen_unchanged=frozen["same"], frozen_differ=frozen["differ"], n_frozen=frozen["compared"])
        enter(out, "finish", cid)
        t = time.time()
        recipe.finish()
        times["finish"] = time.time() - t
        out["phase_seconds"] = {k: round(v, 2) for k, v in times.items()}
        out["phase"] = "done"
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001 (SystemExit too: a run that exits is a failed configuration)
        if isinstance(e, KeyboardInterrupt):
            raise
        out["error"] = f"{type(e).__name__}: {e}"[:2000]
        out["traceback"] = "".join(traceback.format_exception(e))[-4000:]
    finally:
        cleanup(recipe)
    return out


def cleanup(recipe: Any) -> None:
    if recipe is not None:
        with contextlib.suppress(Exception):
            if recipe.engine is not None:
                recipe.engine.destroy()
        recipe.engine = None
        for close in (lambda: recipe.logger and recipe.logger.close(),
                      lambda: recipe.preempt and recipe.preempt.uninstall(),
                      lambda: recipe.run_lock and recipe.run_lock.close()):
            with contextlib.suppress(Exception):
                close()
        recipe.run_lock = None
        recipe.model = None
    torch.nn.functional.linear = _TORCH_LINEAR
    gc.collect()


def read_losses(run_dir: Path) -> dict:
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        return {}
    entries = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    return {str(e["step"]): e["loss"] for e in entries}


# ---------------------------------------------------------------------------------------- agreement
class Outcomes:
    """Each rank's outcome of each configuration, exchanged through the process group's store."""

    def __init__(self, launch_id: str, rank: int, world: int):
        import torch.distributed as dist

        self.rank, self.world = rank, world
        self.store = dist.PrefixStore(f"hyperscale-matrix/{launch_id}/", dist.distributed_c10d._get_default_store())

    def exchange(self, cid: str, outcome: dict) -> Optional[list[dict]]:
        """Every rank's outcome, in rank order; None when the ranks lost each other on this configuration: another
        rank did not report in time (then this one says so in the store and the caller exits), or another rank
        gave up waiting for this one (which was then held in a collective the other had left)."""
        self.store.set(f"{cid}/{self.rank}", json.dumps(outcome))
        keys = [f"{cid}/{r}" for r in range(self.world)]
        deadline = time.time() + AGREE_TIMEOUT_S
        # polled: the store's own wait(keys, timeout) was seen to block past its timeout
        while not self.store.check(keys):
            if time.time() > deadline:
                self.store.set(f"{cid}/abandoned", str(self.rank))
                return None
            time.sleep(0.1)
        if self.store.check([f"{cid}/abandoned"]):
            return None
        return [json.loads(self.store.get(k)) for k in keys]

    def reported(self, cid: str) -> list[Optional[dict]]:
        """What each rank reported on ``cid`` so far (None: nothing), without waiting."""
        keys = [f"{cid}/{r}" for r in range(self.world)]
        return [json.loads(self.store.get(k)) if self.store.check([k]) else None for k in keys]


def write_summary(path: Path, summary: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="+")
    p.add_argument("--base", required=True, type=Path, help="a directory for the runs (BASE/ID each)")
    p.add_argument("--summary", required=True, type=Path, help="the JSON summary rank 0 writes")
    p.add_argument("--source", action="append", default=[], help="NAME=DIR: a backbone directory source")
    args = p.parse_args(argv)
    sources = dict(s.split("=", 1) for s in args.source)
    for cid in args.configs:
        src = parse_id(cid)["source"]
        if src != "preset" and src not in sources:
            raise SystemExit(f"{cid}: no --source {src}=DIR")

    from hyperscale.training import distributed as hdist
    from hyperscale.training.logging import quiet_known_noise

    quiet_known_noise().__enter__()  # for the rest of this driver process
    info = hdist.init(600, "cpu")  # once; every Recipe.setup finds the group started
    rank, world = info.rank, info.world_size
    outcomes = Outcomes(os.environ.get("TORCHELASTIC_RUN_ID", "plain") + f"-{args.summary.name}", rank, world)
    summary: dict = {"configs": {}, "current": None, "started": None, "world_size": world}
    if rank == 0 and args.summary.is_file():  # a relaunch for the configurations that were left
        summary["configs"] = json.loads(args.summary.read_text()).get("configs", {})
    args.base.mkdir(parents=True, exist_ok=True)
    for cid in args.configs:
        t0 = time.time()
        if rank == 0:
            summary.update(current=cid, started=t0)
            write_summary(args.summary, summary)
            print(f"[matrix] {cid}: start", flush=True)
        mine = run_one(cid, args.base, sources)
        mine["seconds"] = round(time.time() - t0, 2)
        everyone = outcomes.exchange(cid, mine)
        desync = everyone is None or len({o["ok"] for o in everyone}) > 1
        if rank != 0:
            if desync:
                sys.stdout.flush()
                os._exit(EXIT_DESYNC)  # rank 0 records why
            continue
        record = dict(mine)
        record["ranks"] = [o and {k: o.get(k) for k in ("ok", "phase", "error", "loaded_as_source", "frozen_unchanged")}
                           for o in (everyone or outcomes.reported(cid))]
        if everyone is not None:
            record["ok"] = all(o["ok"] for o in everyone)
            for key in ("loaded_as_source", "frozen_unchanged"):  # every rank's view (ZeRO-3 gathers on each)
                record[key] = all(o.get(key) for o in everyone) if key in mine else None
            if not record["ok"] and "error" not in record:
                bad = next(o for o in everyone if not o["ok"])
                record.update(error=bad["error"], phase=bad["phase"], traceback=bad.get("traceback"))
        if desync:
            record["ok"] = False
            record["desync"] = True
            record["error"] = (record.get("error") or "") + (
                " [desynchronised: " + ("the ranks lost each other" if everyone is None else
                                        "one rank failed, the other did not") + "; the launch stops here]")
        record["losses"] = read_losses(args.base / cid)
        record["export"] = (args.base / cid / "export" / "model.safetensors").is_file()
        record["losses_finite"] = bool(record["losses"]) and all(
            v is not None and math.isfinite(v) for v in record["losses"].values())
        summary["configs"][cid] = record
        summary.update(current=None, started=None)
        write_summary(args.summary, summary)
        status = "ok" if record["ok"] else f"FAILED in {record['phase']}: {record.get('error', '')[:300]}"
        print(f"[matrix] {cid}: {status} ({record['seconds']} s) losses {record['losses']}", flush=True)
        if desync:
            sys.stdout.flush()
            os._exit(EXIT_DESYNC)
    hdist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
