"""Under ``torchrun --nproc_per_node 2``: build a backbone directory straight into ZeRO-3 shards (bf16) and train
two steps, recording every tensor that has the size of a whole frozen weight.

    torchrun --standalone --nproc_per_node 2 tests/training/sharded_probe.py BACKBONE_DIR OUT.json

A dispatch mode watches every operator output while the partitions are read from the files, while the backbone
hash is computed from the files, and during two training steps outside DeepSpeed's gathers (it is switched off
inside each forward and backward, where ZeRO-3 gathers a layer's weights by design). A tensor counts as a whole
weight when it has as many elements as a frozen weight of more than ``HASH_BLOCK`` elements (smaller ones are
read whole, by design). The partition sizes and the hash are reported too. Rank 0 writes OUT.json.
"""
from __future__ import annotations

import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hyperscale.modeling.io import HASH_BLOCK, weight_files
from hyperscale.modeling.model import HyperscaleModel
from hyperscale.training import engine as eng
from hyperscale.training.config import load_config
from hyperscale.training.ds_config import build_ds_config
from hyperscale.training.host_memory import release_freed_memory
from hyperscale.training.sharded import construct_sharded, load_partitions


class WholeWeights(TorchDispatchMode):
    """Records newly allocated operator outputs with as many elements as a whole weight of ``sizes``."""

    def __init__(self, sizes: set[int]):
        super().__init__()
        self.sizes = sizes
        self.largest = 0
        self.whole: list[str] = []
        self.phase = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: no new memory (e.g. a view of a memory-mapped file)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.largest = max(self.largest, t.numel())
                if t.numel() in self.sizes:
                    self.whole.append(f"{self.phase}: {func} -> {tuple(t.shape)}")
        return out


def main() -> int:
    import deepspeed

    directory, out_path = sys.argv[1], sys.argv[2]
    deepspeed.init_distributed(dist_backend="gloo")
    rank = int(os.environ["RANK"])
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny-cpu.yaml"),
                      [f"model.backbone={directory}", "deepspeed.zero_stage=3", "deepspeed.build_sharded=true",
                       "train.precision=bf16", "train.global_batch_size=4", "train.micro_batch_size=2"])
    ds = build_ds_config(cfg, 2)
    files = weight_files(directory)
    backbone = construct_sharded(directory, files, ds)  # zero.Init: each module partitioned as it is built
    frozen_sizes = {int(p.ds_numel) for p in backbone.parameters() if p.ds_numel > HASH_BLOCK}
    watch = WholeWeights(frozen_sizes)
    with watch:
        watch.phase = "load"
        load_partitions(backbone, files, directory)
        backbone.config._name_or_path = directory
        release_freed_memory()
        watch.phase = "hash"
        model = HyperscaleModel.from_backbone(backbone, ["rte", "cb"], method="hyperformer++", reduction_factor=8)
    partitions = {n: (int(p.ds_tensor.numel()), int(p.ds_numel)) for n, p in backbone.named_parameters()}
    engine = eng.build_engine(model, ds, torch.device("cpu"), sharded=True)
    torch.manual_seed(0)
    losses, live = [], []
    for step in range(2):
        ids = torch.randint(2, 1000, (2, 16))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(2, 1000, (2, 4))}
        loss, _ = eng.forward_loss(engine, batch, torch.tensor(step % 2))
        engine.backward(loss)
        with watch:
            watch.phase = f"step {step + 1}"
            engine.step()
        losses.append(float(loss))
        # between steps every frozen weight is back to its partition (ZeRO-3 releases what it gathered)
        live.append(max(p.data.numel() for n, p in model.backbone.named_parameters() if not p.requires_grad))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"whole": watch.whole, "largest_tensor": watch.largest, "frozen_sizes": sorted(frozen_sizes),
                       "partitions": partitions, "losses": losses, "live_after_step": live,
                       "hash": model.config.backbone_hash, "world": int(os.environ["WORLD_SIZE"])}, f)
    engine.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
