"""Run configuration: frozen dataclasses loaded from YAML with strict keys, validated, overridable.

``load_config(path, overrides)`` reads a YAML file (or the embedded default when ``path`` is
None), applies ``key.sub=value`` overrides (values parsed as YAML scalars) to the parsed YAML before
anything is built, rejects unknown keys with a "did you mean" hint and validates values.

A ``RunConfig`` is never changed after construction (every section is a frozen dataclass; its lists are
its own copies): derive another one with ``cfg.with_overrides(["train.max_steps=10"])`` or
``dataclasses.replace``. The ``model:`` section is ``ModelConfig``, which inherits every architecture
field from ``hyperscale.modeling.config.ArchConfig`` (the one schema a saved model's
``hyperscale_config.json`` is built from too) and adds the run-only fields. Mutable training state never
lives here: see ``hyperscale.training.state``.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from ..data.sample import SAMPLE_TASKS
from ..data.specs import registry_from_config
from ..errors import ConfigError
from ..modeling.config import ArchConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
# train.micro_batch_size and deepspeed.zero_stage: a number, or "auto", resolved once the world size (and the
# device's memory) is known (hyperscale.training.geometry.resolve_auto); RUN/config.yaml records the value chosen
AUTO = "auto"
IntOrAuto = Union[int, Literal["auto"]]


@dataclass(frozen=True)
class ModelConfig(ArchConfig):
    """The ``model:`` section: the architecture fields of ``ArchConfig`` (method, reduction_factor, embedding
    sizes, adapter_ln_eps, ...; defined and validated there, once) plus the settings of this run only."""

    backbone: str = "preset:t5-tiny"  # preset:NAME (random init, saved into the run), a directory, or a hub id
    dropout: Optional[float] = None  # None keeps the backbone's dropout_rate
    gradient_checkpointing: bool = False
    init_seed: int = 0  # seed of a preset backbone's random init

    _KEY_PREFIX = "model."  # errors of the architecture fields name them as the YAML does


@dataclass(frozen=True)
class DataConfig:
    tasks: list = field(default_factory=lambda: list(SAMPLE_TASKS))  # the shipped sample's tasks
    data_dir: str = "sample"  # "sample" (shipped), "hub" (datasets.load_dataset) or a GLUE-layout directory
    tokenizer: str = "default"  # "default" = shipped T5 spiece.model, or a tokenizer directory / hub id
    max_source_length: int = 128
    max_target_length: int = 128
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    n_test: Optional[int] = None
    split_seed: int = 42
    # which n_train training examples (few-shot and low-resource seeds): the train split is permuted again with
    # this seed before the first n_train are kept; validation and test never depend on it. null: no re-permutation
    train_subset_seed: Optional[int] = None
    # pad every training batch's source and target up to a multiple of this (0: to the batch's longest); under
    # train.compile a bucket size bounds the number of compiled graphs (default there: 32)
    pad_to_multiple_of: int = 0
    stsb_grid: float = 0.2
    cache_dir: Optional[str] = None  # tokenized data; default $HYPERSCALE_CACHE/tokenized or ~/.cache/hyperscale/tokenized
    # tasks of your own (README "Your own tasks"): specs written here, and YAML files holding specs; their names
    # then work in data.tasks like the built-in tasks' (hyperscale.data.specs)
    task_specs: list = field(default_factory=list)
    task_files: list = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", list(self.tasks))  # its own list: the caller's is never shared
        object.__setattr__(self, "task_specs", list(self.task_specs or []))
        object.__setattr__(self, "task_files", list(self.task_files or []))


@dataclass(frozen=True)
class SamplerConfig:
    temperature: float = 10.0
    mode: str = "same-task"  # same-task | mixed
    group_by_length: bool = False


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000
    global_batch_size: int = 32
    # examples per rank per forward/backward; auto: the largest that divides global_batch_size / world size, at
    # most what the memory plan fits on a GPU (CPU: at most geometry.CPU_MICRO_BATCH_CAP); see README "Training"
    micro_batch_size: IntOrAuto = AUTO
    lr: float = 3e-4
    warmup_steps: int = 500
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 42
    precision: str = "bf16"  # bf16 | fp32 | fp16 (fp16 needs allow_fp16)
    allow_fp16: bool = False
    device: str = "auto"  # auto | cpu | cuda
    # a non-finite (NaN/inf) loss or gradient: "abort" stops the run at that step, saving nothing from it on and
    # writing RUN/diverged-step-N.json; "skip" leaves the weights and optimizer as they were (the step is logged
    # as skipped) and stops the run only after max_skipped_steps skipped steps in a row. fp16's loss scaler
    # skips steps while it calibrates: with fp16 both policies tolerate max_skipped_steps in a row.
    nonfinite: str = "abort"
    # torch.compile the model's training forward (and with it the backward) through DeepSpeed's engine.compile;
    # evaluation stays eager. See README "Compiled training"
    compile: bool = False
    compile_backend: str = "inductor"  # inductor | aot_eager | eager (debugging) | another registered backend
    max_skipped_steps: int = 10
    # CPU runs: intra-op threads per rank; 0 = auto (the cores of this machine divided by its ranks, at most
    # AUTO_CPU_THREADS_MAX: tiny models gain nothing from more, see benchmarks/NOTES.md)
    cpu_threads: int = 0


@dataclass(frozen=True)
class DeepSpeedConfig:
    # 0-3, or auto: the stage the memory plan recommends for this device's memory (hyperscale.training.plan)
    zero_stage: IntOrAuto = 2
    offload: bool = False  # ZeRO-3 parameter + optimizer offload to CPU
    config: Optional[str] = None  # a user's DeepSpeed JSON; checked against this run config
    build_sharded: bool = False  # ZeRO-3: build the backbone straight into shards (never whole on one rank)
    # DeepSpeed's communication knobs, written into zero_optimization: the all-gather bucket at ZeRO 1-2 (ZeRO-3
    # gathers parameters by its own prefetch buckets), the gradient reduce bucket and overlap at ZeRO 1-3
    allgather_bucket_size: int = 500_000_000
    reduce_bucket_size: int = 500_000_000
    overlap_comm: bool = False


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 0  # 0: only at the end
    mode: str = "rank"  # rank (rank classification where a task has a label set) | generate
    splits: list = field(default_factory=lambda: ["validation", "test"])
    batch_size: int = 32
    max_examples: Optional[int] = None  # per task and split

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", list(self.splits))


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end
    keep_last: int = 2
    resume: Optional[str] = None  # None | auto | a checkpoint directory


@dataclass(frozen=True)
class LoggingConfig:
    every_steps: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    verbose: bool = False  # third-party progress bars and banners, eval lines per task (hyperscale train --verbose)


@dataclass(frozen=True)
class DistributedConfig:
    timeout_s: int = 600
    check_task_sync: bool = False  # debug: verify with a collective that all ranks run the same tasks


TRANSFER_TRAIN = ("embedding", "embedding+hypernet", "embedding+hypernet+norms", "all")


@dataclass(frozen=True)
class TransferConfig:
    """Start from a trained multi-task model (few-shot transfer, ``hyperscale adapt``)."""
    # an export (``hyperscale export``, or a run's ``export/``); the data.tasks it does not know are added to it
    from_export: Optional[str] = None
    new_task_init: str = "mean"  # the new tasks' embeddings (or adapters): mean | random | a task of the export
    # what trains: the task embeddings only, plus the hypernetwork, plus T5's layer norms, or every weight
    # (``all``: the multi-task fine-tuning baseline)
    train: str = "embedding"


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        """A new, validated config: this one with ``key.sub=value`` overrides applied (this one is unchanged)."""
        tree = self.to_dict()
        for key, value in parse_overrides(list(overrides)):
            _set_path(tree, key, value)
        cfg = _build(RunConfig, tree, "")
        validate(cfg)
        return cfg

    def model_fingerprint(self) -> str:
        """Hash of everything a checkpoint's weights depend on (for resume compatibility)."""
        return hashlib.sha256(json.dumps(_weights_keys(self.to_dict()), sort_keys=True).encode()).hexdigest()[:16]


# model keys that do not change a checkpoint's weights (free to differ on resume)
_RESUME_FREE_MODEL_KEYS = ("gradient_checkpointing", "dropout")
# model keys added after runs were fingerprinted: left out at their default, so that older checkpoints (whose
# run_config.yaml lacks them, and whose weights were built with the default) keep their fingerprint
_LATER_MODEL_KEYS = ("adapter_ln_eps",)
_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def _weights_keys(d: dict) -> dict:
    model = d.get("model") or {}
    keys = {"model": {k: v for k, v in model.items() if k not in _RESUME_FREE_MODEL_KEYS
                      and not (k in _LATER_MODEL_KEYS and v == _MODEL_DEFAULTS[k])},
            "tasks": (d.get("data") or {}).get("tasks")}
    transfer = d.get("transfer") or {}
    if transfer.get("from_export"):  # only then (older runs have no such section)
        keys["transfer"] = transfer
    return keys


def resume_differences(saved_run_config: Union[str, Path], cfg: "RunConfig") -> list[str]:
    """What differs between a checkpoint's ``run_config.yaml`` and ``cfg`` in the keys its weights depend on,
    as readable ``key: saved -> now`` lines (empty when compatible)."""
    old = _weights_keys(yaml.safe_load(Path(saved_run_config).read_text()) or {})
    new = _weights_keys(cfg.to_dict())
    diffs = []
    if old["tasks"] != new["tasks"]:
        diffs.append(f"data.tasks: {old['tasks']} in the checkpoint, {new['tasks']} now")
    for key in sorted(set(old["model"]) | set(new["model"])):
        if old["model"].get(key) != new["model"].get(key):
            # a later key left out of the fingerprint was at its default
            was, now = (old["model"].get(key, _MODEL_DEFAULTS.get(key) if key in _LATER_MODEL_KEYS else None),
                        new["model"].get(key, _MODEL_DEFAULTS.get(key) if key in _LATER_MODEL_KEYS else None))
            diffs.append(f"model.{key}: {was!r} in the checkpoint, {now!r} now")
    return diffs


# ---------------------------------------------------------------------------------------------- loading
def _hint(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(known)}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    if tp == IntOrAuto:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and value.is_integer()):
            raise ConfigError(f"{where} must be an integer or auto, got {value!r}")
        return int(value)
    origin = get_origin(tp)
    if origin is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4 and 3e-4 as strings, not floats
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown config key '{path}'{_hint(key, known)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cls: Any = RunConfig
    node = tree
    for i, part in enumerate(parts):
        known = [f.name for f in dataclasses.fields(cls)]
        if part not in known:
            prefix = ".".join(parts[:i])
            raise ConfigError(f"unknown override key '{dotted}': '{part}' is not a key of "
                              f"{prefix or 'the run config'}{_hint(part, known)}")
        tp = get_type_hints(cls)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"override '{dotted}' names a section; set one of its keys, e.g. {dotted}.<key>=...")
            node[part] = value
        else:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
            if node.get(part) is None:  # a section absent from the file, or written as an empty `section:`
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{part}' in the file is not a mapping")
            cls = tp


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"bad override {item!r}: write key.sub=value, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"bad override {item!r}: value is not valid YAML ({e})") from None
        parsed.append((key.strip(), value))
    return parsed


def split_config_arg(config: Optional[str], overrides: list[str]) -> tuple[Optional[str], list[str]]:
    """Command lines take ``[CONFIG] [key=value ...]``: a first argument that is an override, not a YAML file,
    joins the overrides (the config is then the embedded default)."""
    overrides = list(overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return None, [config, *overrides]
    return config, overrides


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    src = Path(path) if path is not None else DEFAULT_CONFIG
    if not src.is_file():
        shipped = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"config file {src} not found (shipped configs in {CONFIG_DIR}: {shipped})")
    try:
        tree = yaml.safe_load(src.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{src} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{src} must hold a mapping of config sections")
    parsed = parse_overrides(list(overrides or []))
    for key, value in parsed:
        _set_path(tree, key, value)
    try:
        cfg = _build(RunConfig, tree, "")
    except ConfigError as e:  # blame the command line when the bad value came from an override
        origin = "command-line override" if any(str(e).startswith(key + " ") for key, _ in parsed) else str(src)
        raise ConfigError(f"{origin}: {e}") from None
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    # the architecture fields of cfg.model (method, reduction_factor, ...) were validated when it was built
    m, t, d = cfg.model, cfg.train, cfg.data
    need(m.dropout is None or 0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    need(len(d.tasks) > 0, "data.tasks is empty: list at least one task, e.g. data.tasks=[rte,mrpc]")
    need(len(set(d.tasks)) == len(d.tasks), f"data.tasks has duplicates: {d.tasks}")
    registry = registry_from_config(d)  # every spec checked (its keys, its files' columns) before anything runs
    for name in d.tasks:
        try:
            registry.get(name)
        except ValueError as e:
            raise ConfigError(f"data.tasks: {e}") from None
    need(d.max_source_length > 0 and d.max_target_length > 0, "data.max_*_length must be positive")
    need(t.max_steps > 0, f"train.max_steps must be positive, got {t.max_steps}")
    micro_auto = t.micro_batch_size == AUTO
    need(t.global_batch_size > 0 and (micro_auto or t.micro_batch_size > 0),
         "train.global_batch_size and train.micro_batch_size must be > 0 (micro_batch_size may be auto)")
    need(micro_auto or t.global_batch_size % t.micro_batch_size == 0,
         f"train.global_batch_size ({t.global_batch_size}) must be a multiple of train.micro_batch_size "
         f"({t.micro_batch_size}) x world size; train.micro_batch_size=auto picks one that divides it")
    for key in ("lr", "adam_beta1", "adam_beta2", "adam_eps", "weight_decay", "grad_clip"):
        need(math.isfinite(getattr(t, key)), f"train.{key} must be a finite number, got {getattr(t, key)}")
    need(t.lr > 0, f"train.lr must be positive, got {t.lr}")
    need(0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1, "train.adam_beta1 and adam_beta2 must be in [0, 1)")
    need(t.adam_eps > 0 and t.weight_decay >= 0, "train.adam_eps must be > 0 and train.weight_decay >= 0")
    tr = cfg.transfer
    need(tr.train in TRANSFER_TRAIN, f"transfer.train must be one of {', '.join(TRANSFER_TRAIN)}, got {tr.train!r}")
    need(bool(tr.new_task_init), "transfer.new_task_init must be mean, random or a task of the export")
    need(not tr.from_export or tr.train == "all" or t.weight_decay == 0,
         f"transfer.train={tr.train} with train.weight_decay={t.weight_decay:g}: weight decay would also shrink the "
         "frozen tasks' embeddings (they share one table); set train.weight_decay=0")
    need(d.pad_to_multiple_of >= 0, f"data.pad_to_multiple_of must be >= 0 (0: no bucketing), got {d.pad_to_multiple_of}")
    need(bool(t.compile_backend), "train.compile_backend must name a torch.compile backend, e.g. inductor")
    need(not t.compile or cfg.deepspeed.zero_stage != 3,
         "train.compile=true works with deepspeed.zero_stage 0-2: ZeRO-3 gathers parameters in hooks that DeepSpeed "
         "excludes from compilation, which splits the forward into a graph per module (41 for the tiny model); use "
         "deepspeed.zero_stage=2 or train.compile=false (see README \"Compiled training\")")
    need(t.nonfinite in ("abort", "skip"), f"train.nonfinite must be abort or skip, got {t.nonfinite!r}")
    need(t.max_skipped_steps >= 1, f"train.max_skipped_steps must be >= 1, got {t.max_skipped_steps}")
    need(t.cpu_threads >= 0, f"train.cpu_threads must be >= 0 (0: auto), got {t.cpu_threads}")
    need(t.warmup_steps >= 0, "train.warmup_steps must be >= 0")
    need(t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)")
    need(t.precision in ("bf16", "fp32", "fp16"), f"train.precision must be bf16, fp32 or fp16, got {t.precision!r}")
    need(t.precision != "fp16" or t.allow_fp16,
         "train.precision=fp16 overflows with T5 activations; use bf16, or set train.allow_fp16=true to accept the risk")
    need(t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {t.device!r}")
    stage = cfg.deepspeed.zero_stage
    need(stage in (0, 1, 2, 3, AUTO), f"deepspeed.zero_stage must be 0-3 or auto, got {stage}")
    need(not cfg.deepspeed.offload or stage == 3,
         "deepspeed.offload needs deepspeed.zero_stage=3" + (" (zero_stage=auto turns offload on itself where nothing "
                                                              "else fits: leave deepspeed.offload=false)"
                                                              if stage == AUTO else ""))
    # under zero_stage=auto, build_sharded applies if the stage chosen is 3
    need(not cfg.deepspeed.build_sharded or stage in (3, AUTO),
         "deepspeed.build_sharded needs deepspeed.zero_stage=3 (only ZeRO-3 shards parameters)")
    need(cfg.sampler.mode in ("same-task", "mixed"), f"sampler.mode must be same-task or mixed, got {cfg.sampler.mode!r}")
    need(cfg.sampler.temperature > 0, "sampler.temperature must be > 0")
    need(cfg.eval.mode in ("rank", "generate"), f"eval.mode must be rank or generate, got {cfg.eval.mode!r}")
    need(cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}")
    need(cfg.eval.max_examples is None or cfg.eval.max_examples >= 1,
         f"eval.max_examples must be >= 1 (or null for all), got {cfg.eval.max_examples}")
    need(len(cfg.eval.splits) > 0, "eval.splits is empty: list validation and/or test")
    for key in ("n_train", "n_val", "n_test"):
        n = getattr(d, key)
        need(n is None or n >= 1, f"data.{key} must be >= 1 (or null for all), got {n}")
    for s in cfg.eval.splits:
        need(s in ("validation", "test"), f"eval.splits: {s!r} is not validation or test")
    need(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1")
    need(cfg.eval.every_steps >= 0 and cfg.checkpoint.every_steps >= 0 and cfg.logging.every_steps >= 1,
         "eval.every_steps / checkpoint.every_steps must be >= 0, logging.every_steps >= 1")
    need(cfg.distributed.timeout_s > 0, "distributed.timeout_s must be > 0")
