"""Files and backbones: loading a backbone, fingerprinting its frozen weights, the saved-model format.

A saved model is a directory with ``hyperscale_config.json`` (the ``HyperscaleConfig``) and
``model.safetensors`` (the trainable weights only). The frozen backbone is not saved with it; its hash is,
and ``verify_backbone`` refuses a different backbone at load time. ``backbone_id`` names the backbone: a hub
id, an absolute directory, or a directory relative to the saved model (``./backbone``, ``../backbone``: an
export that carries its own copy of the backbone, see ``hyperscale.training.export``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import torch
from torch import nn

from .. import hub
from ..atomic import replace_with, write_text_atomic
from ..errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    RunExistsError,
)
from .config import CONFIG_NAME, FORMAT_VERSION, HyperscaleConfig
from .presets import preset_config, preset_ties_head, untie_lm_head

WEIGHTS_NAME = "model.safetensors"

PathLike = Union[str, os.PathLike]


def cache_root() -> Path:
    """Where hyperscale keeps its caches: ``$HYPERSCALE_CACHE`` or ``~/.cache/hyperscale``."""
    return Path(os.environ.get("HYPERSCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hyperscale"))


def load_backbone(backbone: Any, torch_dtype: Optional[torch.dtype] = None) -> tuple[nn.Module, str]:
    """Return (model, backbone_id) for a model instance, ``preset:NAME``, a local directory or a hub id."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        MT5ForConditionalGeneration,
        T5ForConditionalGeneration,
    )

    if isinstance(backbone, nn.Module):
        return backbone, str(getattr(backbone.config, "_name_or_path", "") or "<in-memory>")
    if not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(f"backbone must be a T5 model, a directory, a hub id or 'preset:NAME', got {type(backbone)}")
    spec = str(backbone)
    if spec.startswith("preset:"):
        cfg = preset_config(spec)
        cls = MT5ForConditionalGeneration if cfg.model_type == "mt5" else T5ForConditionalGeneration
        model = cls(cfg)
        if not preset_ties_head(spec):
            untie_lm_head(model)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model, spec
    if os.path.isdir(spec):
        return AutoModelForSeq2SeqLM.from_pretrained(spec, dtype=torch_dtype), str(Path(spec).resolve())
    if os.path.exists(spec):
        raise ConfigError(f"backbone {spec!r} is a file; give the directory written by save_pretrained")
    if spec.startswith((os.sep, ".", "~")) or spec.count("/") > 1:
        raise ConfigError(f"backbone directory {spec!r} does not exist; give a directory written by save_pretrained, "
                          "a hub id (org/name) or preset:NAME (a random initialisation, no download)")
    # a hub id: the Hugging Face cache first (no network); then the hub, if it answers within seconds
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(spec, dtype=torch_dtype, local_files_only=True), spec
    except OSError:
        pass
    hub.require(f"backbone {spec!r}", "use a local copy (a save_pretrained directory) or preset:NAME (random weights)")
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(spec, dtype=torch_dtype), spec
    except OSError as e:  # not on the hub (or no access to it)
        raise ConfigError(f"cannot load backbone {spec!r} from the Hugging Face hub ({str(e).splitlines()[0]}); "
                          "check the id, or use a local copy or preset:NAME") from None


# ---------------------------------------------------------------------------------------- backbone hash
HASH_MAX_ELEMS = 1 << 20  # larger tensors are hashed on a strided sample plus their sum
HASH_VERSION = 3  # of the digest's definition: part of the file-hash cache's key


def backbone_hash(params: Iterable[tuple[str, torch.Tensor]]) -> Optional[str]:
    """A fingerprint of (frozen) backbone weights, stable across fp32/bf16 loading.

    Values are rounded to bf16 before hashing. Tensors above ``HASH_MAX_ELEMS`` elements are hashed on a
    deterministic strided sample plus the fp64 sum of all their bf16-rounded values (a full pass over the bytes
    would take minutes for 11B). Returns None for meta or ZeRO-3-partitioned tensors, which hold no values here:
    :func:`backbone_file_hash` computes the same digest from the checkpoint files instead.
    """
    h = hashlib.sha256()
    for name, p in sorted(params, key=lambda kv: kv[0]):
        if p.is_meta or (hasattr(p, "ds_numel") and p.numel() != getattr(p, "ds_numel")):
            return None
        _hash_tensor(h, name, tuple(p.shape), [p.detach()])
    return h.hexdigest()


HASH_BLOCK = 1 << 16  # elements per block of the sum; also the most a file hash reads at a time (whole rows)


def _hash_tensor(h: Any, name: str, shape: tuple, chunks: Iterable[torch.Tensor]) -> None:
    """One tensor's contribution to :func:`backbone_hash`, from its flattened values in consecutive ``chunks`` whose
    boundaries fall on multiples of ``HASH_BLOCK`` (a whole tensor from a module, pieces from a file): its name and
    shape, above ``HASH_MAX_ELEMS`` elements the exact sum of its bf16 values (``math.fsum`` of each block's fp64 sum,
    so any chunking gives the same digest), and a digest of the bf16 bytes of its elements at multiples of
    ``numel // HASH_MAX_ELEMS``, fed chunk by chunk."""
    numel = math.prod(shape)
    step = max(1, numel // HASH_MAX_ELEMS)
    sums: list[float] = []
    sample = hashlib.sha256()
    offset = 0
    for chunk in chunks:
        t = chunk.reshape(-1).to(torch.bfloat16)
        if numel > HASH_MAX_ELEMS:
            full = t.numel() // HASH_BLOCK * HASH_BLOCK
            sums += t[:full].view(-1, HASH_BLOCK).sum(1, dtype=torch.float64).tolist()
            if full < t.numel():
                sums.append(t[full:].sum(dtype=torch.float64).item())
        sample.update(t[(-offset) % step::step].view(torch.int16).cpu().numpy().tobytes())
        offset += chunk.numel()
    h.update(f"{name}:{tuple(shape)}".encode())
    if numel > HASH_MAX_ELEMS:
        h.update(repr(round(math.fsum(sums), 2)).encode())
    h.update(sample.digest())


def read_flat_range(path: Path, key: str, shape: list[int], start: int, end: int) -> torch.Tensor:
    """Elements ``start:end`` of a safetensors file's weight flattened, reading only the rows that hold them (the
    file is mapped for this read only)."""
    from safetensors import safe_open

    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    first, last = start // row, -(-end // row)
    with safe_open(str(path), framework="pt") as f:
        rows = f.get_slice(key)[first:last].reshape(-1)
    return rows[start - first * row:end - first * row].clone()


def file_shape(path: Path, key: str) -> list[int]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.get_slice(key).get_shape())


def _file_chunks(path: Path, key: str) -> tuple[list[int], Iterator[torch.Tensor]]:
    """A stored weight's shape and its flattened values in pieces on ``HASH_BLOCK`` boundaries (read as the whole
    rows that hold them), never a weight of more than ``HASH_BLOCK`` elements at once (``.bin`` files are
    memory-mapped whole)."""
    if path.suffix != ".safetensors":
        t = _read_tensor(path, key)
        return list(t.shape), iter([t])
    shape = file_shape(path, key)
    numel = math.prod(shape)
    # pieces of up to 15 blocks (about 4 MB of fp32), and at most half of the weight: never all of it at once
    step = max(HASH_BLOCK, min(15 * HASH_BLOCK, numel // 2 // HASH_BLOCK * HASH_BLOCK))
    return shape, (read_flat_range(path, key, shape, a, min(a + step, numel)) for a in range(0, numel, step))


def backbone_file_hash(directory: PathLike, names: dict[str, list[str]]) -> str:
    """:func:`backbone_hash` of a backbone saved in ``directory``, read one tensor at a time from its files: the
    backbone is never built (an 11B checkpoint hashes in the memory of its largest tensor).

    ``names``: each name to hash (:func:`hash_names`) -> the other names its tensor may be stored under (tied
    aliases: T5's ``shared`` / ``encoder.embed_tokens`` / ``lm_head``): a name the files hold is read as stored,
    one they do not from the first alias they hold (as loading ties them). Reads safetensors
    (sharded or not) or, failing that, ``pytorch_model*.bin`` (memory-mapped). The digest is cached per
    directory in ``$HYPERSCALE_CACHE/backbone_hash`` keyed by the files' names, sizes and modification times
    and by the names hashed."""
    d = Path(directory)
    where = weight_files(d)
    files = sorted(set(where.values()))
    key = hashlib.sha256(json.dumps([HASH_VERSION, str(d.resolve()), sorted(names), [
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]).encode()).hexdigest()
    cache = cache_root() / "backbone_hash" / f"{key}.json"
    try:
        return json.loads(cache.read_text())["hash"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for name in sorted(names):
        stored = next((a for a in [name, *names[name]] if a in where), None)
        if stored is None:
            raise CheckpointError(f"backbone directory {d} has no weight {name!r}; is it the backbone the model "
                                  "was built from?")
        shape, chunks = _file_chunks(where[stored], stored)
        _hash_tensor(h, name, tuple(shape), chunks)
    digest = h.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps({"hash": digest, "directory": str(d.resolve())}))
    except OSError:  # a read-only cache: the digest is still right
        pass
    return digest


BACKBONE_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]  # what a backbone's hub repository is fetched for


def local_backbone_dir(spec: Any, download: bool = False) -> Optional[Path]:
    """The directory a backbone's files are in: ``spec`` itself when it is a directory, the snapshot of a hub id in
    the Hugging Face cache; with ``download``, a hub id not in the cache is fetched first (its config, safetensors
    weights and tokenizer files only; the hub must answer). None for a preset, an in-memory model, or an uncached
    hub id without ``download``."""
    if not isinstance(spec, (str, os.PathLike)) or str(spec).startswith("preset:"):
        return None
    if os.path.isdir(spec):
        return Path(spec)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec), local_files_only=True, allow_patterns=BACKBONE_FILES))
    except Exception:  # not cached (or not a hub id)
        if not download:
            return None
    hub.require(f"backbone {spec!r}", "use a local copy (a save_pretrained directory) or preset:NAME (random weights)")
    try:
        return Path(snapshot_download(str(spec), allow_patterns=BACKBONE_FILES))
    except Exception as e:
        raise ConfigError(f"cannot fetch backbone {spec!r} from the Hugging Face hub ({str(e).splitlines()[0]}); "
                          "check the id, or use a local copy or preset:NAME") from None


def weight_files(directory: PathLike) -> dict[str, Path]:
    """Every weight name a backbone directory stores -> the file holding it (safetensors, sharded or not, or
    ``pytorch_model*.bin``), without reading any weight."""
    d = Path(directory)
    files = sorted(d.glob("*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"backbone directory {d} holds no weights (*.safetensors or pytorch_model*.bin)")
    index = next(iter(sorted(d.glob("*.safetensors.index.json"))), None)
    if index is not None and files[0].suffix == ".safetensors":
        return {k: d / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    return {k: f for f in files for k in file_keys(f)}


def holds_separate_head(files: dict[str, Path]) -> bool:
    """Whether loading the backbone with transformers keeps ``lm_head`` apart from the embedding (T5 v1.1,
    flan-t5, mT5): the files hold it, and not with the embedding's values (one tensor of each read, once)."""
    if "lm_head.weight" not in files or "shared.weight" not in files:
        return "lm_head.weight" in files
    return not torch.equal(_read_tensor(files["lm_head.weight"], "lm_head.weight"),
                           _read_tensor(files["shared.weight"], "shared.weight"))


def file_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    return list(torch.load(path, map_location="cpu", mmap=True, weights_only=True).keys())


def _read_tensor(path: Path, key: str) -> torch.Tensor:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key)
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)[key]


def hash_names(backbone: nn.Module) -> dict[str, list[str]]:
    """Every name of a frozen parameter of ``backbone`` (tied aliases included, as :func:`frozen_params` lists
    them) -> the other names of the same parameter, where a file may hold it instead."""
    groups: dict[int, list[str]] = {}
    for n, p in backbone.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            groups.setdefault(id(p), []).append(n)
    return {n: [a for a in names if a != n] for names in groups.values() for n in names}


def frozen_params(backbone: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The backbone weights that do not train (what ``backbone_hash`` fingerprints), under every name: a tied
    weight (T5's ``shared`` / ``embed_tokens`` / ``lm_head``) once per name, so that the hash is the same
    whether a checkpoint's head is tied or a separate tensor with the same values."""
    return [(n, p) for n, p in backbone.named_parameters(remove_duplicate=False) if not p.requires_grad]


def verify_backbone(backbone: nn.Module, saved_hash: str, backbone_id: str, source: PathLike) -> None:
    """Raise unless the frozen weights of ``backbone`` hash to ``saved_hash`` (call after trainable marking)."""
    actual = backbone_hash(frozen_params(backbone))
    if actual != saved_hash:
        raise CheckpointError(
            f"backbone {backbone_id!r} does not match the one {source} was trained on: weight hash "
            f"{actual[:12] if actual else None} != saved {saved_hash[:12]}; "
            "load the original backbone (or pass check_hash=False at your own risk)"
        )


# ---------------------------------------------------------------------------------------- saved models
def save_pretrained(directory: PathLike, config: HyperscaleConfig, state_dict: dict[str, torch.Tensor],
                    overwrite: bool = False) -> Path:
    """Write ``state_dict`` (safetensors, fp32 on CPU) and ``config`` (JSON) into ``directory``.

    Refuses to overwrite an earlier save unless ``overwrite=True``.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    existing = [out / CONFIG_NAME, out / WEIGHTS_NAME]
    if not overwrite and any(p.exists() for p in existing):
        raise RunExistsError(f"{out} already holds a saved model; choose another directory or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
          for k, v in state_dict.items()}
    metadata = {"format": "pt", "hyperscale_format": str(FORMAT_VERSION), "method": config.method,
                "tasks": json.dumps(list(config.tasks)), "sha256": tensors_digest(sd)}
    # safetensors writes through a temporary file created 0600 (then renamed), whatever the umask
    replace_with(out / WEIGHTS_NAME, lambda tmp: save_file(sd, str(tmp), metadata=metadata), mode=file_mode())
    (out / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return out


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` sets it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new directory (0755 under the usual umask 022)."""
    return 0o777 & ~_umask()


def make_readable(*paths: PathLike) -> None:
    """Give ``paths`` and everything under them the modes of freshly created files and directories: files
    written through temporary files (safetensors, ``tempfile``) are 0600, and copies keep their source's mode."""
    fmode, dmode = file_mode(), dir_mode()
    for top in map(Path, paths):
        if top.is_symlink() or not top.exists():
            continue
        if top.is_file():
            os.chmod(top, fmode)
            continue
        os.chmod(top, dmode)
        for root, dirs, files in os.walk(top):
            for name in dirs:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), dmode)
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), fmode)


# ---------------------------------------------------------------------------------------- relative backbones
def is_relative_backbone(backbone_id: Any) -> bool:
    """Whether a recorded ``backbone_id`` is a directory relative to the saved model (``./x``, ``../x``).

    Hub ids (``org/name``) never start with a dot; ``load_backbone`` treats such a string as a path."""
    return isinstance(backbone_id, str) and backbone_id.replace(os.sep, "/").startswith(("./", "../"))


def resolve_backbone_id(backbone_id: Optional[str], directory: PathLike) -> Optional[str]:
    """``backbone_id`` as ``load_backbone`` takes it: a relative one resolved against ``directory``."""
    if is_relative_backbone(backbone_id):
        return str((Path(directory) / backbone_id).resolve())
    return backbone_id


def relative_backbone_id(backbone_dir: PathLike, directory: PathLike) -> str:
    """How a saved model in ``directory`` records the backbone directory ``backbone_dir``: ``./x`` or ``../x``."""
    rel = os.path.relpath(Path(backbone_dir).resolve(), Path(directory).resolve()).replace(os.sep, "/")
    return rel if rel.startswith("../") else "./" + rel


def tensors_digest(sd: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (what ``model.safetensors`` records)."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_config(directory: PathLike) -> HyperscaleConfig:
    d = Path(directory)
    if not (d / CONFIG_NAME).is_file():
        what = ("does not exist" if not d.exists() else "is not a directory" if not d.is_dir()
                else f"has no {CONFIG_NAME}")
        raise CheckpointNotFoundError(f"{d} {what}: give a directory written by "
                                      "HyperscaleModel.save_pretrained or `hyperscale export`")
    try:
        return HyperscaleConfig.from_dict(json.loads((d / CONFIG_NAME).read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as e:  # ConfigError is a ValueError too
        raise CheckpointError(f"{d / CONFIG_NAME} is not a valid hyperscale config: {e}") from None


def read_weights(directory: PathLike, config: Optional[HyperscaleConfig] = None) -> dict[str, torch.Tensor]:
    """``model.safetensors`` of a saved model, checked against what was recorded when it was written: the digest
    of its tensors (garbled bytes), finite values, and the config's method and task order (a task list
    reordered by hand would hand one task's embedding to another)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_NAME
    try:
        sd = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); the export is damaged") from None
    if meta.get("sha256") and tensors_digest(sd) != meta["sha256"]:
        raise CheckpointError(f"{path} is corrupt: its tensors differ from the digest recorded when it was written")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite values in {bad[:3]}{'...' if len(bad) > 3 else ''}; "
                              "the weights are unusable (a diverged run, or a damaged file)")
    if config is not None and "tasks" in meta:
        saved_tasks = json.loads(meta["tasks"])
        if saved_tasks != list(config.tasks) or meta.get("method", config.method) != config.method:
            raise CheckpointError(
                f"{Path(directory) / CONFIG_NAME} does not describe {path}: the weights were saved for method "
                f"{meta.get('method')!r} and tasks {saved_tasks} (in this order), the config says {config.method!r} "
                f"and {list(config.tasks)}; restore the config (task order matters)")
    return sd


def saved_backbone(config: HyperscaleConfig, backbone: Any, directory: PathLike) -> Any:
    """The backbone to load for a saved model: ``backbone`` if given, else the recorded ``backbone_id`` (a
    relative one, an export's own copy, resolved against ``directory``)."""
    if backbone is not None:
        return backbone
    if config.backbone_id is None or config.backbone_id.startswith(("preset:", "<")):
        raise CheckpointError(f"{directory} was trained on backbone {config.backbone_id!r}, which cannot be reloaded "
                         "by name; pass backbone=<the T5 model or its directory>")
    if is_relative_backbone(config.backbone_id):
        resolved = resolve_backbone_id(config.backbone_id, directory)
        if not (Path(resolved) / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"{directory} keeps its backbone in {config.backbone_id!r} (relative to it), but {resolved} holds no "
                "model (no config.json): copy or move the export together with that directory, or pass "
                "backbone=<the T5 model or its directory> (--backbone)")
        return resolved
    return config.backbone_id


def trainable_state_dict_for(model: nn.Module, sd: dict[str, torch.Tensor],
                             source: str = "state dict") -> dict[str, torch.Tensor]:
    """``sd`` checked against the trainable parameters of ``model`` (names and shapes; the model's weights may be
    on the meta device) and keyed by each parameter's first name, as ``model.named_parameters()`` gives it. It
    must cover all of them and nothing frozen; a tied weight may come under any of its names (DeepSpeed's
    consolidation writes T5's ``shared`` / ``embed_tokens`` / ``lm_head`` aliases separately)."""
    own = dict(model.named_parameters(remove_duplicate=False))
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    unknown = [k for k in sd if k not in own]
    covered = {id(own[k]) for k in sd if k in own}
    missing = sorted(n for i, n in trainable.items() if i not in covered)
    frozen = [k for k in sd if k in own and id(own[k]) not in trainable]
    if unknown or missing or frozen:
        raise CheckpointError(f"{source} does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                         f", unexpected {unknown[:5]}{'...' if len(unknown) > 5 else ''}"
                         + (f", frozen in this model {frozen[:5]}" if frozen else ""))
    out = {}
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
        out[trainable[id(own[k])]] = v
    return out


def load_trainable_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy ``sd`` (checked by :func:`trainable_state_dict_for`) into the trainable parameters of ``model``."""
    own = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in trainable_state_dict_for(model, sd, source).items():
            own[k].copy_(v.to(own[k].dtype))


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_backbone", "backbone_hash", "backbone_file_hash", "hash_names",
           "cache_root", "frozen_params", "verify_backbone",
           "save_pretrained", "read_config", "read_weights", "saved_backbone", "load_trainable_state_dict",
           "trainable_state_dict_for", "file_keys",
           "local_backbone_dir", "weight_files", "holds_separate_head", "read_flat_range", "file_shape",
           "is_relative_backbone", "resolve_backbone_id", "relative_backbone_id", "make_readable", "file_mode",
           "dir_mode"]
