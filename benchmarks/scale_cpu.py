#!/usr/bin/env python3
"""The 3B path end to end on 2 CPU ranks: train, resume, export and predict a T5 v1.1 XL (issue 18).

    python benchmarks/scale_cpu.py [--out /tmp/hyperscale_scale] [--preset t5-v1_1-xl] [--phases all]
                                   [--steps 2] [--extend 2] [--src-len 32] [--tgt-len 4] [--keep]

Phases, each a separate process (so that every figure is that process's own):

1. ``write``: a randomly initialised backbone of ``--preset`` written as sharded fp32 safetensors with a
   ``model.safetensors.index.json`` (the layout the hub serves), one tensor at a time: the writer never holds
   the model (it is built on the meta device for its names and shapes).
2. ``train``: ``torchrun --nproc-per-node 2 -m hyperscale.train`` HyperFormer++ on it under ZeRO-3 with
   ``deepspeed.build_sharded=true``, bf16 (the shipped ZeRO-3 template with ZeRO-3's gathered-parameter limits
   lowered to ``LIVE_PARAMETERS``, as ``deepspeed.config``), micro-batch 1, ``--steps`` steps, a checkpoint at the end, the
   evaluation of 2 examples per split (rank classification) and the trainer's own export.
3. ``resume``: the same command with ``--resume auto`` and ``train.max_steps`` raised by ``--extend``.
4. ``export``: ``hyperscale export`` of the last checkpoint into a new directory.
5. ``predict``: ``hyperscale predict`` from that export (one rte input, rank classification).

Each phase's wall time and the peak resident memory (``VmHWM``) of every process it started (per rank for
the launches: the poller reads ``/proc/PID/status`` of every descendant every 0.2 s and maps a process to
its rank through its ``RANK`` variable), and the sizes on disk, go to ``OUT/scale.json`` and, as a
Markdown table, to ``OUT/scale.md`` (what ``benchmarks/NOTES.md`` quotes). The budget the issue sets per
rank is 0.75 x the whole backbone's bf16 bytes plus a stated working allowance (``--allowance-gb``):
the table says whether each rank stayed within it.

Not part of the test suite (about 15-25 minutes on 2 cores, 12 GB of disk for XL).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
PHASES = ("write", "train", "resume", "export", "predict")
SHARD_BYTES = 2 * 10**9  # the hub's XL checkpoint: shards of about 2 GB
LIVE_PARAMETERS = 100_000_000  # ZeRO-3's gathered-parameter limits for this run (200 MB of bf16)


# ---------------------------------------------------------------------------------------------- write
def write_backbone(preset: str, out: Path, seed: int) -> dict:
    """A random ``preset`` as sharded fp32 safetensors, one tensor in memory at a time."""
    import torch
    from safetensors.torch import save_file

    from hyperscale.modeling.presets import preset_config, preset_ties_head

    from transformers import T5ForConditionalGeneration

    cfg = preset_config(f"preset:{preset}")

    with torch.device("meta"):
        meta = T5ForConditionalGeneration(cfg)
    names = {n: tuple(p.shape) for n, p in meta.named_parameters()}  # tied aliases appear once
    if not preset_ties_head(f"preset:{preset}") and "lm_head.weight" not in names:
        names["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)
    g = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    shard: dict = {}
    shard_bytes, shards, index = 0, [], {}

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            shards.append(name)
            for k in shard:
                index[k] = name
            shard, shard_bytes = {}, 0

    total = 0
    for name, shape in names.items():
        if name.endswith("layer_norm.weight") or name.endswith("final_layer_norm.weight"):
            t = torch.ones(shape)
        elif "relative_attention_bias" in name or name in ("shared.weight", "lm_head.weight"):
            t = torch.randn(shape, generator=g) * (1.0 if name == "shared.weight" else cfg.d_model ** -0.5)
        else:  # a linear layer (out, in): std 1/sqrt(fan_in), as T5's initialisation keeps activations O(1)
            t = torch.randn(shape, generator=g) * shape[-1] ** -0.5
        nbytes = t.numel() * 4
        if shard_bytes and shard_bytes + nbytes > SHARD_BYTES:
            flush()
        shard[name] = t
        shard_bytes += nbytes
        total += nbytes
    flush()
    # shard names carry the count, as the hub's do
    final = {}
    for i, name in enumerate(shards):
        new = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(out / name, out / new)
        final[name] = new
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in index.items()}}, indent=2))
    cfg.tie_word_embeddings = preset_ties_head(f"preset:{preset}")  # v1.1: its own head, as the hub's config says
    cfg.save_pretrained(str(out))
    return {"parameters": total // 4, "fp32_bytes": total, "shards": len(shards)}


# ---------------------------------------------------------------------------------------------- measure
def _children(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _status_kb(pid: int, field: str) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _rank_of(pid: int) -> Optional[str]:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"RANK="):
            return kv[5:].decode()
    return None


def run_phase(name: str, cmd: list[str], log: Path, env: dict) -> dict:
    """Run ``cmd``; poll the peak resident memory of every process under it, by rank."""
    peaks: dict[str, int] = {}
    anon: dict[str, int] = {}  # peak anonymous memory (VmHWM also counts file pages mapped at the time)
    t0 = time.time()
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                for pid in _children(proc.pid):
                    hwm = _status_kb(pid, "VmHWM")
                    if hwm is None:
                        continue
                    rank = _rank_of(pid)
                    key = f"rank{rank}" if rank is not None and pid != proc.pid else (
                        "main" if pid == proc.pid else f"pid{pid}")
                    peaks[key] = max(peaks.get(key, 0), hwm * 1024)
                    anon[key] = max(anon.get(key, 0), (_status_kb(pid, "RssAnon") or 0) * 1024)
                stop.wait(0.2)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rc = proc.wait()
        stop.set()
        th.join()
    wall = time.time() - t0
    ranks = {k: v for k, v in peaks.items() if k.startswith("rank")}
    ranks_anon = {k: v for k, v in anon.items() if k.startswith("rank")}
    result = {"phase": name, "rc": rc, "wall_s": round(wall, 1), "peak_rss_bytes": ranks or peaks,
              "peak_anon_bytes": ranks_anon or anon}
    print(f"{name}: rc {rc}, {wall:.0f} s, peak RSS " + ", ".join(
        f"{k} {v / 1e9:.2f} GB" for k, v in sorted((ranks or peaks).items())), flush=True)
    return result


def du(path: Path, seen: set) -> int:
    """Bytes on disk under ``path`` not already counted in ``seen`` (hard links, e.g. an export's link to the
    backbone's files, count once, under the first path that holds them)."""
    total = 0
    for p in [path] if path.is_file() else path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


# ---------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/hyperscale_scale")
    ap.add_argument("--preset", default="t5-v1_1-xl")
    ap.add_argument("--phases", default="all", help=f"comma-separated of {','.join(PHASES)} (default all)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--extend", type=int, default=2)
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--tgt-len", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allowance-gb", type=float, default=2.5,
                    help="per-rank working allowance beyond 0.75 x the backbone's bf16 bytes: the Python process "
                         "with torch, transformers and DeepSpeed loaded (about 1 GB), the tokenized data, the "
                         "bf16 hypernetwork and its fp32 masters and Adam moments, one gathered layer and the "
                         "largest tensor of a shard file read at a time")
    args = ap.parse_args(argv)
    phases = PHASES if args.phases == "all" else tuple(args.phases.split(","))
    unknown = set(phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s) {sorted(unknown)}; choose from {','.join(PHASES)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    backbone, run_dir, export_dir = out / "backbone", out / "run", out / "export"
    results_path = out / "scale.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"phases": {}}
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    # ZeRO-3 keeps up to stage3_max_live_parameters gathered (DeepSpeed's default 1e9: 2 GB of bf16 on each rank once
    # the first step has traced the model); on 2 CPU ranks of 24 GB the XL run caps it, as a user would, with a
    # DeepSpeed JSON of its own (deepspeed.config): the shipped template with three ZeRO-3 limits lowered
    ds_json = out / "zero3_bf16_lowmem.json"
    template = json.loads((REPO / "ds_configs" / "zero3_bf16.json").read_text())
    template["zero_optimization"].update(stage3_max_live_parameters=LIVE_PARAMETERS,
                                         stage3_max_reuse_distance=LIVE_PARAMETERS,
                                         stage3_prefetch_bucket_size=LIVE_PARAMETERS // 5)
    ds_json.write_text(json.dumps(template, indent=2) + "\n")
    py = sys.executable
    cli = str(Path(py).parent / "hyperscale")  # the console script of this environment
    overrides = [f"model.backbone={backbone}", f"output_dir={run_dir}", "model.method=hyperformer++",
                 "model.dropout=0.0", "data.tasks=[rte,cb]", f"data.max_source_length={args.src_len}",
                 f"data.max_target_length={args.tgt_len}", "data.n_val=2", "data.n_test=2",
                 "deepspeed.zero_stage=3", "deepspeed.build_sharded=true", f"deepspeed.config={ds_json}",
                 "train.precision=bf16",
                 "train.global_batch_size=2", "train.micro_batch_size=1", "train.warmup_steps=0",
                 "train.device=cpu", "train.cpu_threads=1", "eval.batch_size=2", "logging.every_steps=1",
                 "logging.progress_bar=false", "logging.tensorboard=false"]
    train_cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "hyperscale.train",
                 str(REPO / "configs" / "tiny-cpu.yaml"), *overrides]
    for phase in phases:
        log = out / f"{phase}.log"
        if phase == "write":
            if backbone.exists():
                shutil.rmtree(backbone)
            code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'benchmarks')!r});"
                    f"from scale_cpu import write_backbone; from pathlib import Path; "
                    f"print(json.dumps(write_backbone({args.preset!r}, Path({str(backbone)!r}), {args.seed})))")
            r = run_phase(phase, [py, "-c", code], log, env)
            r["backbone"] = json.loads(log.read_text().strip().splitlines()[-1]) if r["rc"] == 0 else None
        elif phase == "train":
            if run_dir.exists():
                shutil.rmtree(run_dir)
            r = run_phase(phase, train_cmd + [f"train.max_steps={args.steps}", f"checkpoint.every_steps={args.steps}"],
                          log, env)
        elif phase == "resume":
            r = run_phase(phase, train_cmd + [f"train.max_steps={args.steps + args.extend}",
                                              f"checkpoint.every_steps={args.steps}", "--resume", "auto"], log, env)
        elif phase == "export":
            if export_dir.exists():
                shutil.rmtree(export_dir)
            r = run_phase(phase, [cli, "export", str(run_dir),
                                  str(export_dir)], log, env)
        else:
            r = run_phase(phase, [cli, "predict", str(export_dir), "--task", "rte", "--mode", "rank",
                                  "sentence1: A cat sat on the mat. sentence2: A cat is sitting."], log, env)
            r["output"] = log.read_text().strip().splitlines()[-1] if r["rc"] == 0 else None
        r["log"] = str(log)
        results["phases"][phase] = r
        seen: set = set()
        results["disk_bytes"] = {k: du(p, seen) for k, p in
                                 (("backbone", backbone), ("checkpoints", run_dir / "checkpoints"),
                                  ("run_export", run_dir / "export"), ("export", export_dir)) if p.exists()}
        results["settings"] = vars(args)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        if r["rc"] != 0:
            print(f"{phase} failed (exit {r['rc']}); log: {log}", file=sys.stderr)
            break
    (out / "scale.md").write_text(markdown(results, args.allowance_gb))
    print((out / "scale.md").read_text())
    return 0 if all(r["rc"] == 0 for r in results["phases"].values()) else 1


def markdown(results: dict, allowance_gb: float) -> str:
    bb = (results["phases"].get("write") or {}).get("backbone") or {}
    params = bb.get("parameters")
    budget = 0.75 * 2 * params + allowance_gb * 1e9 if params else None
    lines = [f"backbone: {params:,} parameters, {bb.get('fp32_bytes', 0) / 1e9:.1f} GB fp32 in {bb.get('shards')} shards; "
             f"per-rank budget 0.75 x {2 * params / 1e9:.2f} GB (bf16) + {allowance_gb} GB = {budget / 1e9:.2f} GB"
             if params else "backbone: (write phase not in this run)", "",
             "| phase | exit | wall s | peak RSS (VmHWM) per process, GB | peak anonymous RSS (polled), GB | within budget |",
             "|---|---:|---:|---|---|---|"]
    for name, r in results["phases"].items():
        peaks = r["peak_rss_bytes"]
        within = "" if budget is None or not any(k.startswith("rank") for k in peaks) else (
            "yes" if all(v <= budget for v in peaks.values()) else "NO")
        lines.append(f"| {name} | {r['rc']} | {r['wall_s']:.0f} | "
                     + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(peaks.items())) + " | "
                     + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(r.get("peak_anon_bytes", {}).items()))
                     + f" | {within} |")
    lines += ["", "disk (hard links counted once, under the first): " + ", ".join(
        f"{k} {v / 1e9:.2f} GB" for k, v in results.get("disk_bytes", {}).items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
