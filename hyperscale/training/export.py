"""ZeRO checkpoint -> standalone weights (``HyperscaleModel.save_pretrained`` format), in an export that stands
alone: ``OUT/backbone`` holds a copy of the backbone (unless it is a hub id) and ``OUT/export.json`` says what
the export holds and how to load it.

Uses DeepSpeed's own ``zero_to_fp32`` API for ZeRO 1-3 checkpoints of any number of ranks (the
fp32 master copies of the trainable parameters); a ZeRO-0 checkpoint holds its module weights in
``mp_rank_00_model_states.pt``, which ``zero_to_fp32`` cannot read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from .. import __version__
from ..atomic import write_text_atomic
from ..data.tokenization import default_tokenizer, load_tokenizer
from ..errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    RunExistsError,
)
from ..modeling.io import (
    file_mode,
    holds_separate_head,
    local_backbone_dir,
    make_readable,
    relative_backbone_id,
    resolve_backbone_id,
    save_pretrained,
    trainable_state_dict_for,
    weight_files,
)
from ..modeling.model import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    HyperscaleConfig,
    HyperscaleModel,
    load_backbone,
)
from ..modeling.presets import backbone_from_config
from .logging import hidden_output
from .checkpoint import COMPLETE, read_trainer_state, resolve_checkpoint, safe_load
from .config import DataConfig, EvalConfig, TrainConfig


def _bf16_optimizer_state_dict(ckpt_dir: Path, files: list[Path]) -> dict[str, torch.Tensor]:
    """fp32 master weights from DeepSpeed's BF16_Optimizer files (bf16 with ZeRO-1), which ``zero_to_fp32``
    does not read: each rank holds a contiguous slice of every parameter group, the last one padded."""
    import re

    files = sorted(files, key=lambda f: int(re.search(r"pp_rank_(\d+)_", f.name).group(1)))
    states = [safe_load(f)["optimizer_state_dict"] for f in files]
    model_states = safe_load(ckpt_dir / "mp_rank_00_model_states.pt")
    sd: dict[str, torch.Tensor] = {}
    for g, shapes in enumerate(model_states["param_shapes"]):
        flat = torch.cat([st["single_partition_of_fp32_groups"][g].float() for st in states])
        offset = 0
        for name, shape in shapes.items():
            n = int(torch.Size(shape).numel())
            sd[name] = flat[offset:offset + n].view(shape).clone()
            offset += n
        padding = sum(int(st["group_paddings"][g]) for st in states)
        if offset + padding != flat.numel():
            raise CheckpointError(f"{ckpt_dir}: parameter group {g} holds {flat.numel()} values, expected {offset} + "
                             f"{padding} padding; is this checkpoint complete?")
    return sd


def consolidated_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    run_cfg = yaml.safe_load((ckpt_dir / "run_config.yaml").read_text())
    stage = int(run_cfg["deepspeed"]["zero_stage"])
    # ZeRO-1 + bf16 runs DeepSpeed's BF16_Optimizer; ZeRO 2/3 + bf16 name their (zero_to_fp32-readable)
    # optimizer files the same way, and a ZeRO-3 checkpoint has no mp_rank_00_model_states.pt
    bf16_files = list(ckpt_dir.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    if bf16_files and stage == 1:
        sd = _bf16_optimizer_state_dict(ckpt_dir, bf16_files)
    elif stage == 0:
        states = safe_load(ckpt_dir / "mp_rank_00_model_states.pt")
        sd = states["module"]
    else:
        # DeepSpeed only here: exports and inference run without it
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )

        with hidden_output():  # its "Processing zero checkpoint" block and progress bar, unless verbose
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name,
                                                          exclude_frozen_parameters=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


EXPORT_INFO = "export.json"
BACKBONE_DIR = "backbone"
MATERIALIZED_DIR = "materialized"
TOKENIZER_DIR = "tokenizer"
# what an export writes into OUT (and replaces with --overwrite); nothing else there is touched
EXPORT_ENTRIES = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR, BACKBONE_DIR, MATERIALIZED_DIR, EXPORT_INFO)
_STAGE = ".backbone.partial"  # the backbone copy while it is written (renamed to backbone/ when complete)
# files of a backbone directory that loading it with transformers (PyTorch) never reads
_OTHER_FRAMEWORKS = ("tf_model", "flax_model", "rust_model", "model.onnx", "openvino_model", "coreml")
_OTHER_SUFFIXES = (".h5", ".msgpack", ".ot", ".onnx", ".onnx_data", ".tflite", ".mlmodel", ".gguf")


def _backbone_kind(spec: str) -> str:
    """``preset``, ``dir`` (a local directory) or ``hub`` (anything else ``load_backbone`` accepts: a hub id)."""
    if spec.startswith("preset:"):
        return "preset"
    return "dir" if os.path.isdir(spec) else "hub"


def _copy_backbone_dir(src: Path, dst: Path) -> list[str]:
    """Copy the files transformers loads a backbone directory from (config, weights, generation config,
    tokenizer files); other frameworks' weights, subdirectories and hidden files are left out."""
    names = sorted(p.name for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    if "config.json" not in names:
        raise CheckpointError(f"backbone directory {src} has no config.json; give a directory written by "
                              "save_pretrained (--backbone)")
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    keep = [n for n in names
            if not n.startswith(_OTHER_FRAMEWORKS) and not n.endswith(_OTHER_SUFFIXES)
            and not (has_safetensors and n.startswith("pytorch_model") and (n.endswith(".bin") or ".bin." in n))]
    dst.mkdir(parents=True)
    for n in keep:
        try:  # a hard link on the same file system: an 11B backbone is not stored twice
            os.link((src / n).resolve(), dst / n)
        except OSError:  # another file system: a copy (following symlinks: hub cache snapshots link to blobs)
            shutil.copyfile(src / n, dst / n)
    return keep


def _checkpoint_step(ckpt_dir: Path) -> Optional[int]:
    state = read_trainer_state(ckpt_dir)
    if state is not None:
        return int(state.step)
    m = re.fullmatch(r"step-(\d+)", ckpt_dir.name)
    return int(m.group(1)) if m else None


def _files(out: Path) -> dict[str, int]:
    """Every file of the export (``export.json`` aside) and its size in bytes, by path relative to ``out``."""
    files = {}
    for name in EXPORT_ENTRIES:
        top = out / name
        if name == EXPORT_INFO or not top.exists():
            continue
        for p in ([top] if top.is_file() else sorted(q for q in top.rglob("*") if q.is_file())):
            files[p.relative_to(out).as_posix()] = p.stat().st_size
    return dict(sorted(files.items()))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _skeleton(config: HyperscaleConfig, backbone_dir: Path) -> HyperscaleModel:
    """The model of ``config`` on the meta device (names, shapes, which weights train; no memory), built from
    the backbone directory's ``config.json`` the way loading it would (a separate LM head where the files
    hold one)."""
    from transformers import AutoConfig

    bb_config = AutoConfig.from_pretrained(str(backbone_dir))
    with torch.device("meta"):
        backbone = backbone_from_config(bb_config, tied_head=not holds_separate_head(weight_files(backbone_dir)))
        return HyperscaleModel(backbone, dataclasses.replace(config, backbone_hash=None), compute_hash=False)


def export_checkpoint(checkpoint: Path | str, out: Path | str, materialize: bool = False,
                      backbone: Optional[str] = None, overwrite: bool = False,
                      include_backbone: Optional[bool] = None) -> Path:
    """Write the checkpoint's weights into ``out`` as a standalone export (see ``load_export``).

    ``include_backbone``: copy the backbone into ``out/backbone`` (Hugging Face layout) and record it relative
    to the export (``./backbone``), so that the export loads with nothing else: moved, copied to another
    machine, after the run is deleted. Default (None): include a local directory or a preset (which the trainer
    saves into the run), not a hub id, which stays recorded as the hub id. ``materialize`` also writes
    ``out/materialized`` (static adapters), which shares the copy (``../backbone``). ``out/export.json`` says
    what the export holds (and the checkpoint's step); it is written last. An existing export in ``out`` is
    never replaced unless ``overwrite``.
    """
    ckpt_dir = resolve_checkpoint(str(checkpoint), Path(checkpoint))
    if ckpt_dir is None or not (ckpt_dir / COMPLETE).is_file():
        raise CheckpointNotFoundError(f"no complete checkpoint at {checkpoint}")
    out = Path(out)
    # an export is complete once its config is written (export.json follows it); other entries without them
    # are what an export stopped half-way left, and are replaced
    if not overwrite and any((out / n).exists() for n in (CONFIG_NAME, EXPORT_INFO)):
        raise RunExistsError(f"{out} already holds an export; choose another directory or pass --overwrite")
    config = HyperscaleConfig.from_dict(json.loads((ckpt_dir / CONFIG_NAME).read_text()))
    if materialize and config.method not in ("hyperformer++", "hyperformer"):
        raise ConfigError(f"--materialize applies to hypernetwork methods, not {config.method!r}")
    spec = backbone or resolve_backbone_id(config.backbone_id, ckpt_dir)
    if not spec or str(spec).startswith("<"):
        raise CheckpointError(f"{ckpt_dir} records no backbone that can be loaded ({config.backbone_id!r}); pass "
                              "--backbone <the T5 model's directory or hub id>")
    spec = str(spec)
    kind = _backbone_kind(spec)
    source_dir = local_backbone_dir(spec)
    if materialize or source_dir is None:  # materializing runs the hypernetwork: the whole model, on the CPU
        model_bb, loaded_id = load_backbone(spec)
        model = HyperscaleModel(model_bb, dataclasses.replace(config, backbone_hash=None))
    else:  # the model's skeleton on the meta device; the backbone's files are hashed one tensor at a time
        model, loaded_id = _skeleton(config, source_dir), (spec if kind == "hub" else str(source_dir.resolve()))
        model.config = dataclasses.replace(model.config, backbone_id=str(source_dir.resolve()))
        model.update_backbone_hash()
    saved_hash = config.backbone_hash
    if saved_hash and model.config.backbone_hash != saved_hash:
        raise CheckpointError(f"backbone {spec!r} differs from the one {ckpt_dir} was trained on "
                         "(weight hash mismatch); pass --backbone with the original")
    sd = consolidated_state_dict(ckpt_dir)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{ckpt_dir} holds non-finite weights ({', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}):"
                              " the run diverged before this checkpoint; export an earlier one")
    include = (kind in ("preset", "dir")) if include_backbone is None else bool(include_backbone)
    step = _checkpoint_step(ckpt_dir)

    # everything is checked: from here on the export is written (export.json last)
    out.mkdir(parents=True, exist_ok=True)
    bb_target = out / BACKBONE_DIR
    source_in_place = kind == "dir" and _same(Path(spec), bb_target)  # e.g. exporting a model into its own folder
    # what an earlier export left here must not pass for part of this one (its config and export.json first:
    # stopped half-way, this export is then incomplete, not a mix of two)
    for name in (EXPORT_INFO, CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR, MATERIALIZED_DIR, _STAGE) + (
            () if source_in_place else (BACKBONE_DIR,)):
        _remove(out / name)
    if include and not source_in_place:
        stage = out / _STAGE
        if source_dir is not None:
            _copy_backbone_dir(source_dir, stage)
        else:  # a preset or a hub model: as loaded (and hash-checked), before the trained weights go in
            model.backbone.save_pretrained(str(stage))
        os.replace(stage, bb_target)
    recorded = "./" + BACKBONE_DIR if include else loaded_id
    sd = trainable_state_dict_for(model, sd, source=str(ckpt_dir))
    if materialize:
        model.load_trainable_state_dict(sd, source=str(ckpt_dir))
    model.config = dataclasses.replace(model.config, backbone_id=recorded)
    if (ckpt_dir / TOKENIZER_DIR).is_dir():
        shutil.copytree(ckpt_dir / TOKENIZER_DIR, out / TOKENIZER_DIR, dirs_exist_ok=True)
    save_pretrained(out, model.config, sd)
    if materialize:
        mat = model.materialize()
        mat_dir = out / MATERIALIZED_DIR
        if include:  # one copy of the backbone, shared
            mat.config = dataclasses.replace(mat.config, backbone_id=relative_backbone_id(bb_target, mat_dir))
        mat.save_pretrained(mat_dir)
        if (out / TOKENIZER_DIR).is_dir():
            shutil.copytree(out / TOKENIZER_DIR, mat_dir / TOKENIZER_DIR, dirs_exist_ok=True)
    make_readable(*(out / n for n in EXPORT_ENTRIES))

    shown = str(out.resolve())
    info = {
        "format": "hyperscale-export",
        "hyperscale_version": __version__,
        "format_version": FORMAT_VERSION,
        "method": config.method,
        "tasks": list(config.tasks),
        "source": {"checkpoint": str(ckpt_dir.resolve()), "step": step},
        "step": step,
        "backbone": {
            "included": include,
            "path": BACKBONE_DIR if include else None,
            "backbone_id": recorded,
            "hub_id": loaded_id if kind == "hub" and not include else None,
            "origin": loaded_id,
            "hash": model.config.backbone_hash,
        },
        "materialized": MATERIALIZED_DIR if materialize else None,
        "evaluation": evaluation_settings(ckpt_dir),
        # the full spec of every task of your own (data.task_specs / task_files): predict, eval and adapt need
        # no spec file (hyperscale.data.specs.registry_for_export)
        "task_specs": recorded_task_specs(ckpt_dir),
        "tokenizer": TOKENIZER_DIR if (out / TOKENIZER_DIR).is_dir() else None,
        "files": _files(out),
        "how_to_load": [
            f"hyperscale predict {shlex.quote(shown)} --task {config.tasks[0]} 'INPUT TEXT'",
            f"from hyperscale import HyperscaleModel; model = HyperscaleModel.from_pretrained({shown!r})",
        ],
    }
    write_text_atomic(out / EXPORT_INFO, json.dumps(info, indent=2) + "\n", mode=file_mode())
    return out


def recorded_task_specs(ckpt_dir: Path) -> dict:
    """``{task: full spec}`` of the tasks of your own a checkpoint's model knows (its ``task_specs.json``; empty
    for built-in tasks only, and for checkpoints written before it existed)."""
    try:
        specs = json.loads((ckpt_dir / "task_specs.json").read_text())
    except (OSError, ValueError):
        return {}
    return specs if isinstance(specs, dict) else {}


def read_export_info(path: str | Path) -> Optional[dict]:
    """``export.json`` of an export (None when it has none: written before it existed, or by save_pretrained).
    Its ``evaluation`` is a dict or None (exports written before it existed, or without a run config)."""
    try:
        info = json.loads((Path(path) / EXPORT_INFO).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if not isinstance(info.get("evaluation"), dict):
        info["evaluation"] = None
    return info


def evaluation_settings(ckpt_dir: Path) -> Optional[dict]:
    """What the trainer's evaluation of ``ckpt_dir``'s run used (its ``run_config.yaml``): the tasks, the split
    protocol (data source, split seed, n_val/n_test, STS-B grid), the lengths, the mode, batch size and examples
    per task, the splits and the precision, so that ``hyperscale eval`` of the export reproduces
    ``RUN/results.json``. None without a readable run config with a ``data`` section; keys an older config lacks
    take today's defaults. A relative ``data_dir`` that exists is made absolute (relative to where the run started)."""
    try:
        cfg = yaml.safe_load((ckpt_dir / "run_config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data"), dict):
        return None
    defaults = {"data": DataConfig(), "eval": EvalConfig(), "train": TrainConfig()}

    def get(section: str, key: str) -> Any:
        given = cfg.get(section)
        return given[key] if isinstance(given, dict) and key in given else getattr(defaults[section], key)

    data_dir = get("data", "data_dir")
    if data_dir not in ("sample", "hub") and Path(data_dir).is_dir():
        data_dir = str(Path(data_dir).resolve())
    return {"tasks": list(get("data", "tasks")), "data_dir": data_dir,
            **{k: get("data", k) for k in ("split_seed", "n_val", "n_test", "stsb_grid", "max_source_length",
                                           "max_target_length")},
            **{k: get("eval", k) for k in ("mode", "batch_size", "max_examples", "splits")},
            "precision": get("train", "precision")}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (a GPU when CUDA sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a device; asking for
    a GPU that is not there is a ConfigError."""
    spec = str(device)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {spec!r} is not a device: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA device is visible here; use --device cpu, or --device auto "
                              "(a GPU when there is one)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {spec}: {n} CUDA device(s) are visible (cuda:0 to cuda:{n - 1})")
    return dev


def _inference_dtype(dtype: Any, dev: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):  # bf16 where the GPU computes in it (fp16 overflows with T5), else fp32
        return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _place(model: HyperscaleModel, dev: torch.device, path: str | Path) -> None:
    """Move ``model`` to ``dev``. On ``cuda`` (no index) with a model larger than the current GPU's free memory and
    several GPUs visible, a ``finetune`` model is spread over them (accelerate's ``device_map="auto"``); the
    adapter methods' hooks apply the bank's weights on one device, so those must fit one GPU."""
    if dev.type != "cuda":
        model.to(dev)
        return
    index = torch.cuda.current_device() if dev.index is None else dev.index
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    free = torch.cuda.mem_get_info(index)[0]
    if need < free:
        model.to(dev)
        return
    several = dev.index is None and torch.cuda.device_count() > 1
    if not several or model.bank is not None:
        why = ("spreading a model with adapters over several GPUs is not supported" if several
               else f"cuda:{index} has {free / 2**30:.1f} GiB free")
        raise ConfigError(f"{path}: the model needs {need / 2**30:.1f} GiB on the GPU, {why}; use --dtype bf16, a GPU "
                          "with more free memory, or --device cpu")
    from accelerate import dispatch_model, infer_auto_device_map

    bb = model.backbone
    dispatch_model(bb, device_map=infer_auto_device_map(bb, no_split_module_classes=list(bb._no_split_modules or [])))


def load_export(path: str | Path, backbone: Optional[str] = None, device: str | torch.device = "auto",
                dtype: Any = None) -> tuple[HyperscaleModel, Any]:
    """An export (``hyperscale export`` or ``save_pretrained``) and its tokenizer, ready for inference.

    ``device``: ``auto`` (a GPU when CUDA sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` (see
    ``_place`` for a model larger than one GPU). ``dtype`` (a torch dtype, ``fp32``, ``bf16``, ``fp16``; default
    bf16 on a GPU, fp32 on the CPU) applies to the whole model, backbone and adapters, as DeepSpeed casts the
    trainer's model: in the run's ``train.precision`` the scores are the trainer's."""
    dev = inference_device(device)
    dt = _inference_dtype(dtype, dev)
    model = HyperscaleModel.from_pretrained(path, backbone=backbone, torch_dtype=dt)
    model.to(dtype=dt)
    _place(model, dev, path)
    model.eval()
    tok_dir = Path(path) / TOKENIZER_DIR
    tokenizer = load_tokenizer(str(tok_dir)) if tok_dir.is_dir() else default_tokenizer()
    return model, tokenizer
