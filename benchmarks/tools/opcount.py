"""Count ATen ops and autograd backward nodes of one HyperFormer++ training step (deterministic,
unlike CPU timings on a shared machine). Usage: python benchmarks/tools/opcount.py"""
import torch
from torch.profiler import profile, ProfilerActivity
from hyperscale.modeling import HyperscaleModel
torch.manual_seed(0)
m = HyperscaleModel.from_backbone("preset:t5-small", ["rte","cb"], reduction_factor=32)
ids = torch.randint(2, 200, (4, 32)); lab = torch.randint(2, 200, (4, 4))
def step(t):
    out = m(ids, torch.ones_like(ids), labels=lab, task_ids=t); out.loss.backward()
for t in ("rte", ["rte","cb","rte","cb"]):
    step(t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(t)
    ev = prof.key_averages()
    n_ops = sum(e.count for e in ev if e.key.startswith("aten::"))
    nodes = sum(e.count for e in ev if "Backward" in e.key)
    print(("single" if isinstance(t,str) else "mixed"), "aten ops", n_ops, "backward nodes", nodes)
