"""What a built DeepSpeed engine holds per rank, by category, for the memory plan's test (tests/training/
test_plan.py): one process (world size 1, in-process from the test) or every rank under torchrun (2 ranks, all
configurations in sequence in one launch)::

    torchrun --standalone --nproc_per_node 2 tests/training/plan_probe.py --out OUT.json z0-fp32 z3-bf16 ...

A configuration id is ``z{stage}-{precision}``. Each is built the way the trainer builds it (``preset:t5-tiny``,
HyperFormer++ on two tasks, :func:`hyperscale.training.engine.build_engine` over the DeepSpeed config of
:func:`hyperscale.training.ds_config.build_ds_config`), then runs one training step of micro-batch 2 (forward with
the trainer's loss, ``engine.backward``, ``engine.step``). Rank 0 writes ``{id: {rank: holdings}}`` to ``--out``.

The holdings (:func:`holdings`) are storage bytes, each storage counted once (views and tied aliases share one):

- ``frozen`` / ``trainable``: the module's parameters that do not / do train: the local ``.data`` (whole below
  ZeRO-3, and under ZeRO-3 for the parameters it keeps whole) plus, under ZeRO-3, the partition ``ds_tensor``;
  for trainable parameters flattened by ZeRO 1-3 the flat buffer their views live in;
- ``master``: the tensors the inner (torch) optimizer updates, when they are not the model's own storage;
- ``optimizer``: the inner optimizer's state tensors (Adam's ``exp_avg``, ``exp_avg_sq`` and the ``step`` counter);
- ``gradients``: every gradient storage the engine holds: ``.grad`` / ``.grad_accum`` of the module's parameters
  and of the master tensors, and the DeepSpeed optimizer's gradient attributes (every attribute whose name holds
  ``grad`` walked to depth 3); measured right after ``engine.backward`` and again inside the inner optimizer's
  ``step`` (when DeepSpeed has made the fp32 gradients it feeds Adam), the larger of the two;
- ``reduce_bucket``: the reduce buckets (``ipg_buckets``) DeepSpeed allocated (recorded when a bucket is reduced:
  ZeRO 1-2 free them after backward);
- ``allreduce_copy``: the largest gradient copy the engine flattens for an all-reduce (ZeRO-0, bf16 ZeRO-1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hyperscale.modeling import HyperscaleModel  # noqa: E402
from hyperscale.training.config import load_config  # noqa: E402
from hyperscale.training.ds_config import build_ds_config  # noqa: E402
from hyperscale.training.engine import build_engine, forward_loss  # noqa: E402

BACKBONE = "preset:t5-tiny"
TASKS = ["rte", "cb"]
REDUCTION_FACTOR = 8
MICRO_BATCH = 2
_TORCH_LINEAR = torch.nn.functional.linear


def run_config(cid: str, world: int) -> "RunConfigLike":
    stage, precision = parse_id(cid)
    return load_config(None, [f"train.precision={precision}", f"deepspeed.zero_stage={stage}",
                              f"train.global_batch_size={MICRO_BATCH * world}", f"train.micro_batch_size={MICRO_BATCH}",
                              "train.max_steps=5", "train.warmup_steps=1", f"model.backbone={BACKBONE}",
                              f"model.reduction_factor={REDUCTION_FACTOR}", f"data.tasks=[{','.join(TASKS)}]"])


RunConfigLike = Any


def parse_id(cid: str) -> tuple[int, str]:
    stage, precision = cid.split("-")
    return int(stage.removeprefix("z")), precision


def _storage(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


def _tensors(x: Any, depth: int = 0) -> Iterable[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif depth < 3 and isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y, depth + 1)
    elif depth < 3 and isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y, depth + 1)
    if depth < 3 and isinstance(x, list) and getattr(x, "flat_partition", None) is not None:  # ZeRO-2's grad group
        yield x.flat_partition


def _sum(storages: dict[int, int]) -> int:
    return int(sum(storages.values()))


def _collect(ts: Iterable[Any], exclude: set[int] = frozenset(), scalars: bool = True) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in ts:
        if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > 0 and (scalars or t.dim() > 0):
            ptr, n = _storage(t)
            if ptr not in exclude:
                out[ptr] = n
    return out


def _param_storages(module: torch.nn.Module, trainable: bool) -> dict[int, int]:
    ts = []
    for p in module.parameters():
        if p.requires_grad != trainable:
            continue
        ts.append(p.data)
        if getattr(p, "ds_tensor", None) is not None:
            ts.append(p.ds_tensor)
    return _collect(ts)


def _inner(engine: Any) -> torch.optim.Optimizer:
    return engine.basic_optimizer


def _gradient_storages(engine: Any, exclude: set[int]) -> dict[int, int]:
    opt, inner = engine.optimizer, _inner(engine)
    ts: list = []
    for p in engine.module.parameters():
        ts += [p.grad, getattr(p, "grad_accum", None)]
    for group in inner.param_groups:
        ts += [p.grad for p in group["params"]]
    for holder in {id(opt): opt, id(inner): inner}.values():
        for name, value in vars(holder).items():
            if "grad" in name.lower() and "hook" not in name.lower():
                ts += list(_tensors(value))
        for name in ("fp32_groups", "single_partition_of_fp32_groups", "fp32_partitioned_groups_flat",
                     "fp32_groups_flat_partition"):
            ts += [t.grad for t in _tensors(getattr(holder, name, None)) if t is not None]
    return _collect(ts, exclude, scalars=False)  # 0-dim ones are norms and flags, not gradients


def holdings(engine: Any, peak_gradients: int, peak_buckets: int, allreduce_copy: int) -> dict[str, int]:
    module, inner = engine.module, _inner(engine)
    frozen = _param_storages(module, trainable=False)
    trainable = _param_storages(module, trainable=True)
    model_ptrs = set(frozen) | set(trainable)
    masters = _collect([p for g in inner.param_groups for p in g["params"]], exclude=model_ptrs)
    # ZeRO-3 keeps its master partitions out of param_groups between steps (filled on the fly before each step)
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition",
                 "fp32_groups"):
        masters.update(_collect(_tensors(getattr(engine.optimizer, name, None)), exclude=model_ptrs))
    state = _collect(t for s in inner.state.values() for t in s.values())
    return {"frozen": _sum(frozen), "trainable": _sum(trainable), "master": _sum(masters),
            "gradients": int(peak_gradients), "optimizer": _sum(state),
            "reduce_bucket": max(int(peak_buckets), _bucket_bytes(engine)), "allreduce_copy": int(allreduce_copy)}


def _bucket_bytes(engine: Any) -> int:
    return _sum(_collect(t for b in getattr(engine.optimizer, "ipg_buckets", {}).values() for t in _tensors(b.buffer)))


def build(cid: str, world: int) -> tuple[Any, Any]:
    cfg = run_config(cid, world)
    ds = build_ds_config(cfg, world)
    torch.manual_seed(0)
    dtype = torch.float32  # the trainer's fp32 load; bf16 runs are cast by DeepSpeed
    model = HyperscaleModel.from_backbone(BACKBONE, TASKS, reduction_factor=REDUCTION_FACTOR, torch_dtype=dtype)
    return build_engine(model, ds, torch.device("cpu")), cfg


def probe(cid: str, world: int) -> dict[str, int]:
    """Build ``cid``'s engine, run one step, return this rank's holdings (the engine is destroyed)."""
    engine, _ = build(cid, world)
    try:
        def not_gradients() -> set[int]:
            ptrs = set(_param_storages(engine.module, True)) | set(_param_storages(engine.module, False))
            inner = _inner(engine)
            ptrs |= set(_collect(p for g in inner.param_groups for p in g["params"]))
            ptrs |= set(_collect(t for s in inner.state.values() for t in s.values()))
            ptrs |= set(_collect(t for b in getattr(engine.optimizer, "ipg_buckets", {}).values()
                                 for t in _tensors(b.buffer)))
            return ptrs

        seen: list[int] = []  # gradient bytes at each instant measured
        buckets: list[int] = [0]  # reduce-bucket bytes while they exist (ZeRO 1-2 release them after backward)
        copies: list[int] = [0]  # the engine's flattened all-reduce copy (ZeRO-0, bf16 ZeRO-1)
        inner, opt = _inner(engine), engine.optimizer
        original_step = inner.step

        def step(*args: Any, **kwargs: Any) -> Any:
            seen.append(_sum(_gradient_storages(engine, not_gradients())))
            return original_step(*args, **kwargs)

        inner.step = step
        if hasattr(opt, "flatten"):  # the moment ZeRO 1-3 flatten gradients into the fp32 copy Adam gets
            original_flatten = opt.flatten

            def flatten(tensors: Any) -> torch.Tensor:
                flat = original_flatten(tensors)
                excluded = not_gradients()  # a flattened view of a reduce bucket is no new storage
                seen.append(_sum({**_gradient_storages(engine, excluded), **_collect([flat], excluded)}))
                return flat

            opt.flatten = flatten
        if hasattr(opt, "reduce_ipg_grads"):
            original_reduce = opt.reduce_ipg_grads

            def reduce_ipg_grads(*args: Any, **kwargs: Any) -> Any:
                buckets.append(_bucket_bytes(engine))
                return original_reduce(*args, **kwargs)

            opt.reduce_ipg_grads = reduce_ipg_grads
        original_engine_flatten = engine.flatten

        def engine_flatten(tensors: Any) -> torch.Tensor:
            flat = original_engine_flatten(tensors)
            copies.append(flat.numel() * flat.element_size())
            return flat

        engine.flatten = engine_flatten
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(2, 200, (MICRO_BATCH, 9), generator=g)
        labels = torch.randint(2, 200, (MICRO_BATCH, 3), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        loss, _ = forward_loss(engine, batch, "rte")
        engine.backward(loss)
        seen.append(_sum(_gradient_storages(engine, not_gradients())))
        engine.step()
        inner.step = original_step
        return holdings(engine, max(seen), max(buckets), max(copies))
    finally:
        engine.destroy()
        torch.nn.functional.linear = _TORCH_LINEAR


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("configs", nargs="+")
    args = ap.parse_args(argv)
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict = {}
    for cid in args.configs:
        mine = probe(cid, world)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        results[cid] = {str(r): h for r, h in enumerate(gathered)}
    if rank == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.exit(main())
