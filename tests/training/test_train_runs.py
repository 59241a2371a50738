"""Real training runs of configs/tiny-cpu.yaml under DeepSpeed on CPU (gloo): 2 processes under
``torchrun`` for ZeRO 0, 2 and 3, and 1 plain process. The runs are shared (see conftest.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from training_helpers import RESUME_STEP

pytestmark = pytest.mark.distributed

# one run per ZeRO stage (bf16 where the run is bf16: the matrix in test_train_matrix.py trains bf16 under every
# stage and source; two more 12-step bf16 launches here cost ~1 min and tested nothing the matrix does not)
RUN_OF_STAGE = {0: "fp32-z0", 1: "bf16-z1", 2: "bf16-z2", 3: "fp32-z3"}
FROZEN_KEYS = ("backbone.shared.weight", "backbone.encoder.embed_tokens.weight",
               "backbone.decoder.embed_tokens.weight", "backbone.lm_head.weight")


# ---------------------------------------------------------------------------------------- the loss falls
@pytest.mark.parametrize("stage", sorted(RUN_OF_STAGE))
def test_training_runs_and_loss_falls(runs, stage: int):
    run = runs(RUN_OF_STAGE[stage])
    log = run.train_log()
    assert [e["step"] for e in log] == list(range(1, 13))
    losses = [e["loss"] for e in log]
    assert all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, f"loss did not fall: first steps {losses[:3]}, last steps {losses[-3:]}"
    # every step saw the whole global batch of 8, all of one task (same-task sampling)
    for e in log:
        assert sum(e["tasks"].values()) == 8 and len(e["tasks"]) == 1
    # a final evaluation, checkpoint and export happened
    assert (run.dir / "results.json").is_file() and (run.dir / "export" / "hyperscale_config.json").is_file()
    assert (run.ckpt_root / "latest").read_text().strip() == "step-00000012"
    # known-harmless third-party noise is filtered at its source (training/logging.quiet_known_noise)
    text = run.log.read_text()
    for noise in ("is deprecated", "Setting accelerator to CPU", "Attempting to get learning rate"):
        assert noise not in text, noise


def test_bf16_and_fp32_track_each_other(runs):
    bf16, fp32 = runs("bf16-z2").losses(), runs("fp32-z2").losses()
    for step in bf16:
        assert bf16[step] == pytest.approx(fp32[step], rel=0.05)


@pytest.mark.parametrize("stage", [2, 3])
def test_fp32_losses_agree_across_stages(runs, stage: int):
    ref, other = runs("fp32-z0").losses(), runs(f"fp32-z{stage}").losses()
    assert ref.keys() == other.keys()
    for step in ref:
        assert other[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-5), step


def test_global_batch_means_the_same_on_one_process(runs):
    """global = micro x accumulation x world: 1 process with 2 accumulation steps = 2 processes with 1."""
    one, two = runs("fp32-z0-1p").losses(), runs("fp32-z0").losses()
    assert one.keys() == two.keys()
    for step in one:
        assert one[step] == pytest.approx(two[step], rel=1e-5, abs=1e-5), step


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("name", ["fp32-z2", "fp32-z0-1p"])
def test_resume_gives_the_uninterrupted_losses(runs, name: str):
    full, resumed = runs(name), runs(f"{name}-resumed")
    a, b = full.train_log(), resumed.train_log()
    # the resumed run's log: steps up to the checkpoint kept, later (stale) lines dropped, then rewritten
    assert [e["step"] for e in b] == list(range(1, 13))
    for ea, eb in zip(a, b):
        assert eb["tasks"] == ea["tasks"], f"step {ea['step']}: sampler state not continued"
        assert eb["lr"] == pytest.approx(ea["lr"], rel=1e-12, abs=1e-15), f"step {ea['step']}: LR schedule"
        assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-6, abs=1e-6), f"step {ea['step']}"
    assert f"at step {RESUME_STEP}" in resumed.log.read_text()  # "resumed from ... at step 4"
    # the end states agree: trainer counters and the trained weights
    sa = json.loads((full.checkpoint(12) / "trainer_state.json").read_text())
    sb = json.loads((resumed.checkpoint(12) / "trainer_state.json").read_text())
    for key in ("step", "samples_seen", "tokens_seen", "sampler", "config_fingerprint"):
        assert sa[key] == sb[key], key
    from safetensors.torch import load_file

    wa = load_file(str(full.dir / "export" / "model.safetensors"))
    wb = load_file(str(resumed.dir / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------- checkpoint size
@pytest.mark.parametrize("stage", sorted(RUN_OF_STAGE))
def test_checkpoint_excludes_the_backbone(runs, stage: int):
    from safetensors import safe_open

    run = runs(RUN_OF_STAGE[stage])
    ckpt = run.checkpoint(12)
    backbone_file = run.dir / "backbone" / "model.safetensors"
    backbone_bytes = backbone_file.stat().st_size
    with safe_open(str(backbone_file), "pt") as f:
        backbone_keys = {f"backbone.{k}" for k in f.keys()}
    frozen = {k for k in backbone_keys if "layer_norm" not in k} | set(FROZEN_KEYS)  # layer norms train

    model_files = sorted(ckpt.glob("*model_states.pt"))
    optim_files = sorted(ckpt.glob("*optim_states.pt"))
    assert model_files and (optim_files or stage == 0)
    trainable_numel, module_bytes = None, 0
    for path in model_files:
        states = torch.load(path, map_location="cpu", weights_only=False)
        module = states.get("module") or {}
        leaked = sorted(k for k in module if k in frozen)
        assert not leaked, f"{path.name} holds frozen backbone weights: {leaked[:5]}"
        for key in FROZEN_KEYS:
            assert key not in module
        module_bytes += sum(v.numel() * v.element_size() for v in module.values() if torch.is_tensor(v))
        if stage in (0, 1, 2):
            assert module, f"{path.name}: no module weights"
            trainable_numel = sum(v.numel() for v in module.values())
            # only the hypernetwork/task embeddings and the T5 layer norms are in it
            assert all(k.startswith("bank.") or "layer_norm" in k for k in module), sorted(module)[:5]

    total = sum(p.stat().st_size for p in model_files + optim_files)
    # the module weights are a small fraction of the backbone ...
    assert module_bytes < 0.25 * backbone_bytes, (module_bytes, backbone_bytes)
    # ... and all model + optimizer files (fp32 master + 2 Adam moments of the trainable 10 % of this tiny
    # model; ZeRO-0 keeps its optimizer inside the model file) stay well under the backbone's bytes: with
    # the frozen weights inside, the model file alone would come close to or exceed them
    assert total < 0.5 * backbone_bytes, (total, backbone_bytes)
    if trainable_numel is not None:  # bf16 weights + 12 bytes of fp32 optimizer state per trainable value (fp32: 4 + 8)
        assert total < 1.2 * trainable_numel * (2 + 12) + 200_000, (total, trainable_numel)


def test_checkpoint_layout_and_retention(runs):
    run = runs("bf16-z2")
    tags = sorted(p.name for p in run.ckpt_root.iterdir() if p.is_dir())
    assert tags == ["step-00000004", "step-00000008", "step-00000012"]  # keep_last 3, every 4 steps
    ckpt = run.checkpoint(12)
    for name in ("COMPLETE", "trainer_state.json", "run_config.yaml", "hyperscale_config.json",
                 "tokenizer", "rng/rank-0.pt", "rng/rank-1.pt"):
        assert (ckpt / name).exists(), name
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["samples_seen"] == 96 and state["sampler"]
    assert state["config_fingerprint"] and state["best_metric"] is not None
    assert (run.ckpt_root / "best").read_text().strip() == state["best_tag"]


# ----------------------------------------------------------------------------------------- TensorBoard
def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def _expected_tags(tasks):
    tags = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/samples_per_s",
            "train/skipped_steps", "eval/validation/mean_all_metrics", "eval/test/mean_all_metrics"}
    for t in tasks:
        tags |= {f"train/task_count/{t}", f"eval/validation/{t}/acc", f"eval/test/{t}/acc"}
    return tags


@pytest.mark.parametrize("name", ["fp32-z0", "bf16-z2", "fp32-z3", "fp32-z0-1p-resumed"])
def test_tensorboard_events_read_back(runs, name: str):
    run = runs(name)
    ea = _events(run.dir)
    scalars = set(ea.Tags()["scalars"])
    tasks = ["rte", "cb"]
    missing = _expected_tags(tasks) - scalars
    assert not missing, f"missing TensorBoard tags {sorted(missing)}; have {sorted(scalars)}"
    # per-task training loss for every task that was sampled
    sampled = {t for e in run.train_log() for t in e["tasks"]}
    assert {f"train/loss/{t}" for t in sampled} <= scalars
    # logged every 2 steps, no step twice
    steps = [e.step for e in ea.Scalars("train/loss")]
    assert steps == [2, 4, 6, 8, 10, 12]
    counts = {t: sum(e.value for e in ea.Scalars(f"train/task_count/{t}")) for t in tasks}
    assert sum(counts.values()) == 96
    assert all(math.isfinite(e.value) and e.value > 0 for e in ea.Scalars("train/grad_norm"))
    assert [e.value for e in ea.Scalars("train/skipped_steps")][-1] == 0
    # the resolved config as text
    assert "config/text_summary" in ea.Tags()["tensors"]
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "zero_stage" in text and "hyperformer++" in text


def test_tensorboard_purges_events_after_the_resumed_step(runs):
    run = runs("fp32-z2-resumed")
    ea = _events(run.dir)
    assert len(list((run.dir / "tensorboard").glob("events.out.tfevents.*"))) >= 2  # the old run's file is there
    for tag in ("train/loss", "train/lr", "eval/test/mean_all_metrics", "train/loss/rte"):
        steps = [e.step for e in ea.Scalars(tag)]
        assert steps == sorted(set(steps)), f"{tag}: duplicate or unordered steps after resume: {steps}"
    assert [e.step for e in ea.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    # the curve after the resumed step is the resumed run's
    by_step = {e.step: e.value for e in ea.Scalars("train/loss")}
    full = {e.step: e.value for e in _events(runs("fp32-z2").dir).Scalars("train/loss")}
    for step in by_step:
        assert by_step[step] == pytest.approx(full[step], rel=1e-6)


def test_fp32_grad_norm_agrees_across_stages(runs):
    """ZeRO-0 fp32 has no DeepSpeed-side norm; the trainer's own must match what ZeRO-2 reports."""
    z0 = [e.value for e in _events(runs("fp32-z0").dir).Scalars("train/grad_norm")]
    z2 = [e.value for e in _events(runs("fp32-z2").dir).Scalars("train/grad_norm")]
    assert len(z0) == len(z2) == 6
    for a, b in zip(z0, z2):
        assert a == pytest.approx(b, rel=1e-4)
