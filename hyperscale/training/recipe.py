"""The training recipe behind ``hyperscale train`` and ``python -m hyperscale.train``.

torchtune's shape: :class:`Recipe` declares all of its state in ``__init__``; ``setup`` builds the
distributed environment, data, model and engine and resumes; ``train`` is a loop that reads top to
bottom (sample, forward, backward, step, then log, eval and save on their own intervals); ``evaluate``,
``save``, ``load`` and ``finish`` do what they say.

Features: DeepSpeed ZeRO 0-3 over a frozen T5 (bf16 by default), a global batch that means the same on
any number of ranks, a resumable temperature-based multi-task sampler, checkpoints that hold only the
trainable weights, preemption (SIGUSR1/SIGTERM: checkpoint at the next step boundary, requeue), and an
export to standalone weights at the end. A finished run resumed again (``--resume auto``, what every
requeue of a finished SLURM job does) prints its results, makes sure its export exists and exits 0; a
larger ``train.max_steps`` on resume extends the run with a continuous learning rate
(:func:`hyperscale.training.engine.continue_schedule`).

Step statistics (per-task loss sums, example and token counts) stay on the training device; they are
all-reduced and copied to the host once per logging window (and before an eval, a save or a stop), not
per micro-batch.

A resume on another number of ranks goes through DeepSpeed's universal checkpoint format; one run at a time
holds ``output_dir`` (a lock). A non-finite loss or gradient stops the run with a diagnostic
(``train.nonfinite=abort``), or leaves that step out, stopping after ``train.max_skipped_steps`` in a row (``skip``).

Raises (all :class:`hyperscale.errors.HyperscaleError`): ``ConfigError`` (bad or incompatible configuration, a
resume under another ZeRO stage, too little disk), ``RunExistsError`` (``output_dir`` holds a run and no
``--resume``, or another run holds its lock), ``CheckpointNotFoundError`` / ``CheckpointError`` (nothing to
resume at an explicit path, a damaged or unsafe checkpoint) and ``TrainingDivergedError``.
"""
from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml
from tqdm.auto import tqdm

from ..data.loading import columns_as_lists, load_multitask_splits, protocol_fingerprint
from ..data.metrics import average_metrics, compute_task_metrics
from ..data.sampler import MultiTaskSampler
from ..data.specs import TaskRegistry, registry_for_export, registry_from_config
from ..data.tokenization import (
    Seq2SeqCollator,
    default_tokenizer,
    load_tokenizer,
    tokenize_splits,
)
from ..errors import CheckpointNotFoundError, ConfigError, HyperscaleError, RunExistsError, TrainingDivergedError
from ..modeling.compile import prepare_for_compile
from ..modeling.model import HyperscaleModel, load_backbone
from . import checkpoint as ckpt
from . import distributed as hdist
from . import engine as eng
from .auto import resolve_auto
from .config import AUTO, RunConfig, resume_differences
from .ds_config import build_ds_config
from .evaluate import predict_task
from .geometry import per_rank_batch
from .export import export_checkpoint
from .logging import RunLogger, quiet_unless_verbose
from .preemption import PreemptionHandler
from .host_memory import release_freed_memory
from .sharded import build_sharded_backbone
from .state import TrainState, seed_everything
from .transfer import check_export_dir, load_for_transfer, restore_fp32_masters, trainable_fp32, trained_parameters

log0 = hdist.log0
AUTO_CPU_THREADS_MAX = 2  # measured: benchmarks/NOTES.md (CPU threads)
COMPILE_BUCKET = 32  # train.compile without data.pad_to_multiple_of: lengths padded to multiples of this
EXIT_STOPPED = 3  # stopped by a signal after saving a checkpoint (outside SLURM): resume with --resume auto


class Recipe:
    def __init__(self, cfg: RunConfig, resume: Optional[str] = None):
        self.cfg = cfg
        self.resume = resume if resume is not None else cfg.checkpoint.resume
        self.output_dir = Path(cfg.output_dir).resolve()
        self.ckpt_root = self.output_dir / "checkpoints"
        self.tasks: list[str] = list(cfg.data.tasks)
        self.task_to_id = {t: i for i, t in enumerate(self.tasks)}
        # distributed
        self.rank, self.local_rank, self.world = 0, 0, 1
        self.device = torch.device("cpu")
        # what setup builds
        self.resume_from: Optional[Path] = None  # the checkpoint this run continues from
        self.universal_resume = False  # resume_from was written by another number of ranks (ZeRO 1-3)
        self.finished = False  # the checkpoint is already at train.max_steps: nothing to train
        self.tokenizer: Any = None
        self.registry: TaskRegistry = TaskRegistry()  # the built-in tasks plus the run's own (data.task_specs/files)
        self.data: dict = {}
        self.protocol: dict = {}
        self.collate: Optional[Seq2SeqCollator] = None
        self.train_columns: dict = {}
        self.sampler: Optional[MultiTaskSampler] = None
        self.ds_config: dict = {}
        self.model: Optional[HyperscaleModel] = None
        self.model_task_ids: Optional[torch.Tensor] = None  # data task index -> model task index
        self.model_task_ids_device: Optional[torch.Tensor] = None  # the same on the training device
        self.transfer_weights: Optional[dict] = None  # transfer runs: the export's exact fp32 trainable weights
        self.engine: Any = None
        self.logger: Optional[RunLogger] = None
        self.preempt: Optional[PreemptionHandler] = None
        self.run_lock: Optional[ckpt.RunLock] = None  # rank 0's lock on output_dir (released by finish() or the process's end)
        # mutable training state: checkpointed (TrainState) or derived per process
        self.state = TrainState()
        self.results: dict = {}  # split -> evaluation result of this process's latest evaluation
        self.last_tag: Optional[str] = None  # the newest checkpoint tag of this run
        self.pending: list[torch.Tensor] = []  # per-step statistics not yet on the host (on self.device)
        self.pending_lr: list[float] = []
        self.pending_skipped: list[bool] = []  # whether each pending step was left out (train.nonfinite)
        self.window = self._empty_window()
        self.own_grad_norm: Optional[torch.Tensor] = None  # measured by the trainer (bare fp32 optimizer)

    # ================================================================== setup
    @quiet_unless_verbose  # third-party progress bars and banners off unless logging.verbose (undone on return)
    def setup(self) -> None:
        """Build everything a run needs, or refuse it and leave its output_dir as it was (nothing written)."""
        try:
            self._setup()
        except BaseException:
            self._abandon()
            raise

    def _setup(self) -> None:
        cfg = self.cfg
        info = hdist.init(cfg.distributed.timeout_s, cfg.train.device)
        self.rank, self.local_rank, self.world, self.device = info.rank, info.local_rank, info.world_size, info.device
        per_rank_batch(cfg.train.global_batch_size, self.world)  # refused before anything is written
        self._set_cpu_threads()
        self._lock_output_dir()
        self._check_output_dir()
        saved = self._resume_point()
        self.cfg = cfg = self._resolve_auto(saved)  # numbers for the auto settings, before any data is read
        if saved is not None:
            self.last_tag = self.resume_from.name
            self.finished = saved.step >= cfg.train.max_steps
            if self.finished and (self.output_dir / "results.json").is_file():
                self.state = saved  # nothing to build: finish() reports the finished run
                self.results = json.loads((self.output_dir / "results.json").read_text())
                return
            self._check_topology(saved)
        if cfg.transfer.from_export:
            check_export_dir(cfg.transfer)  # before the data is read
        seed_everything(cfg.train.seed + self.rank)
        self._setup_data()
        if saved is not None and saved.sampler:
            self._check_sampler_state(saved)
        self.ds_config = build_ds_config(cfg, self.world)
        if self.universal_resume:
            self.ds_config["checkpoint"] = {**self.ds_config.get("checkpoint", {}), "load_universal": True}
        self._setup_model()
        self.engine = eng.build_engine(self.model, self.ds_config, self.device, sharded=cfg.deepspeed.build_sharded,
                                       compile_backend=cfg.train.compile_backend if cfg.train.compile else None)
        if self.transfer_weights is not None:  # before a checkpoint's own masters are loaded
            restore_fp32_masters(self.engine, self.transfer_weights)
            self.transfer_weights = None
        if self.resume_from is not None:
            self.load(self.resume_from)
            self.finished = self.state.step >= cfg.train.max_steps
        self.state.config_fingerprint = cfg.model_fingerprint()
        self.state.backbone_hash = self.model.config.backbone_hash
        self.state.schedule = eng.schedule_state(self.engine, cfg.train.lr)
        self.state.world_size, self.state.zero_stage = self.world, cfg.deepspeed.zero_stage
        self._check_free_space()
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_once("config.yaml", cfg.to_yaml())
            self._write_once("data_protocol.json", json.dumps(self.protocol, indent=2) + "\n")
        self.logger = RunLogger(self.output_dir, self.rank, cfg.logging.tensorboard,
                                resume_step=self.state.step if self.resume_from is not None else None)
        if self.resume_from is None:
            self.logger.text("config", "```\n" + cfg.to_yaml() + "\n```")
        self.preempt = PreemptionHandler().install()

    def _abandon(self) -> None:
        """A refused set-up: signal handlers back, the lock released with the directory restored (RunLock.abandon)."""
        if self.preempt is not None:
            self.preempt.uninstall()
        if self.run_lock is not None:
            self.run_lock.abandon()
            self.run_lock = None

    def _write_once(self, name: str, text: str) -> None:
        """Write a run file; a resumed run whose file differs keeps the original and writes its own
        version next to it (``config.resumed-step-00000400.yaml``), never overwriting what was written."""
        path = self.output_dir / name
        if path.exists() and path.read_text() != text:
            stem, dot, ext = name.partition(".")
            path = self.output_dir / f"{stem}.resumed-step-{self.state.step:08d}{dot}{ext}"
            log0(f"{name} differs from the run's original; this resume's version: {path.name}")
        if not path.exists():
            path.write_text(text)

    def _set_cpu_threads(self) -> None:
        """On CPU, ``train.cpu_threads`` intra-op threads per rank; auto: the cores other work leaves idle (by the
        1-minute load average), shared by this machine's ranks, at most AUTO_CPU_THREADS_MAX. Thread pools that
        outnumber the idle cores are ten times slower (benchmarks/NOTES.md, CPU threads)."""
        if self.device.type != "cpu":
            return
        n = self.cfg.train.cpu_threads
        if n == 0:
            cores = len(os.sched_getaffinity(0))
            idle = max(1, cores - int(os.getloadavg()[0] + 0.5))
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or min(self.world, cores)
            n = max(1, min(AUTO_CPU_THREADS_MAX, idle // max(1, local_ranks)))
        torch.set_num_threads(n)
        log0(f"CPU: {n} thread(s) per rank (train.cpu_threads={self.cfg.train.cpu_threads or 'auto'})")

    def _lock_output_dir(self) -> None:
        """One run per output_dir: rank 0 holds its lock for the whole run; every rank stops if it cannot."""
        error: Optional[HyperscaleError] = None
        if self.rank == 0:
            try:
                self.run_lock = ckpt.lock_run_dir(self.output_dir)
            except HyperscaleError as e:
                error = e
        if hdist.any_rank(error is not None):
            raise error or RunExistsError(f"output_dir {self.output_dir} cannot be used (rank 0 says why)")

    def _check_output_dir(self) -> None:
        has_run = ckpt.find_latest(self.ckpt_root) is not None or (self.output_dir / "train_log.jsonl").exists()
        if has_run and not self.resume:
            raise RunExistsError(
                f"output_dir {self.output_dir} already holds a run; continue it with --resume auto, or choose "
                "another output_dir (nothing is overwritten)")

    def _resume_point(self) -> Optional[TrainState]:
        """Find the checkpoint to continue from and refuse an incompatible one before data, model and engine
        are built (DeepSpeed fails on mismatched shapes, unclearly). Returns its recorded TrainState."""
        if not self.resume:
            return None
        self.resume_from = ckpt.resolve_checkpoint(self.resume, self.output_dir)
        if self.resume_from is None:
            if self.resume != "auto":
                raise CheckpointNotFoundError(f"nothing to resume at {self.resume}")
            return None
        saved = ckpt.read_trainer_state(self.resume_from)
        if saved is not None:
            self._check_fingerprint(self.resume_from, saved.config_fingerprint)
            self._check_sampler_config(saved)
        return saved

    def _resolve_auto(self, saved: Optional[TrainState]) -> RunConfig:
        """The run config with ``train.micro_batch_size`` and ``deepspeed.zero_stage`` as numbers for this world size
        and device (:func:`hyperscale.training.auto.resolve_auto`; a number given is checked against the world
        size). Rank 0 decides (the memory plan takes seconds) and every rank takes its answer; a resume keeps its
        checkpoint's stage under ``zero_stage=auto``. The result is what RUN/config.yaml and checkpoints record."""
        cfg = self.cfg
        saved_stage = None
        if cfg.deepspeed.zero_stage == AUTO and saved is not None and saved.zero_stage is not None:
            saved_cfg = self.resume_from / "run_config.yaml"
            try:
                offload = bool(((yaml.safe_load(saved_cfg.read_text()) or {}).get("deepspeed") or {}).get("offload"))
            except (OSError, yaml.YAMLError):
                offload = False
            saved_stage = (int(saved.zero_stage), offload)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or self.world
        answer: Any = None
        if self.rank == 0:
            try:
                answer = resolve_auto(cfg, self.world, self.device.type, local_ranks, saved_stage=saved_stage)
            except ConfigError as e:
                answer = str(e)
        answer = hdist.all_gather_object(answer)[0]
        if isinstance(answer, str):
            raise ConfigError(answer)
        for note in answer.notes:
            log0(note)
        return answer.cfg

    def _check_sampler_config(self, saved: TrainState) -> None:
        """The global batch of every step is a function of the sampler's settings: a resume that changes them
        would not continue the run. Refused before any data is read (the task sizes are checked once it is)."""
        was = (saved.sampler or {}).get("config") or {}
        c = self.cfg
        now = {"global_batch_size": c.train.global_batch_size, "seed": c.train.seed,
               "temperature": c.sampler.temperature, "mode": c.sampler.mode,
               "group_by_length": c.sampler.group_by_length}
        names = {"global_batch_size": "train.global_batch_size", "seed": "train.seed",
                 "temperature": "sampler.temperature", "mode": "sampler.mode",
                 "group_by_length": "sampler.group_by_length"}
        diffs = [f"{names[k]}: {was[k]!r} in the checkpoint, {v!r} now" for k, v in now.items()
                 if k in was and was[k] != v]
        if diffs:
            raise ConfigError(f"cannot resume from {self.resume_from}: {'; '.join(diffs)}. The sampled batches "
                              "depend on these settings: resume with the checkpoint's values, or start a new output_dir")

    def _check_sampler_state(self, saved: TrainState) -> None:
        """After the data is read: the checkpoint's sampler must fit this run's task sizes (``data.n_train``,
        ``data.train_subset_seed``, the data files), before the model and the engine are built."""
        try:
            self.sampler.load_state_dict(saved.sampler)
        except ValueError as e:
            raise ConfigError(f"cannot resume from {self.resume_from}: {e}; resume with the checkpoint's data "
                              "settings (data.n_train, data.train_subset_seed, data.data_dir), or start a new "
                              "output_dir") from None

    def _check_topology(self, saved: TrainState) -> None:
        """ZeRO 1-3 partition the optimizer state over the ranks that wrote it. On another number of ranks the
        checkpoint is read through DeepSpeed's universal format (converted once, into RUN/universal/); a ZeRO-0
        checkpoint holds the state whole and loads anywhere. Another ZeRO stage is refused (not verified)."""
        stage, world = self.cfg.deepspeed.zero_stage, self.world
        if saved.world_size is None or (saved.world_size, saved.zero_stage) == (world, stage):
            return
        if saved.zero_stage != stage:
            raise ConfigError(
                f"cannot resume from {self.resume_from}: it was written under ZeRO-{saved.zero_stage}, this run uses "
                f"ZeRO-{stage}. Resume with deepspeed.zero_stage={saved.zero_stage} or auto (any number of ranks); to "
                "change the stage, `hyperscale export` the run and start a new one (the optimizer state is not kept)")
        if stage > 0:
            self.universal_resume = True
            log0(f"{self.resume_from} was written by {saved.world_size} rank(s), this run has {world}: resuming "
                 "through DeepSpeed's universal checkpoint format")

    def _check_free_space(self) -> None:
        """Refuse to start when output_dir cannot hold two checkpoints (trainable weights, fp32 masters and two
        Adam moments: about 16 bytes per trainable parameter, on top of what is there)."""
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters() if p.requires_grad)
        need = 2 * (16 * trainable + (8 << 20))
        free = shutil.disk_usage(self.output_dir).free if self.rank == 0 else need
        if hdist.any_rank(free < need):
            raise ConfigError(f"output_dir {self.output_dir} has {free / 2**20:.0f} MiB free; two checkpoints of this "
                              f"run need about {need / 2**20:.0f} MiB: free space or choose another output_dir")

    def _check_fingerprint(self, ckpt_dir: Path, saved_fingerprint: str) -> None:
        fp = self.cfg.model_fingerprint()
        if not saved_fingerprint or saved_fingerprint == fp:
            return
        saved_cfg = ckpt_dir / "run_config.yaml"
        diffs = resume_differences(saved_cfg, self.cfg) if saved_cfg.is_file() else []
        what = "; ".join(diffs) if diffs else f"fingerprint {saved_fingerprint} != {fp}"
        raise ConfigError(
            f"cannot resume from {ckpt_dir}: its model/tasks configuration differs from this run's ({what}). "
            f"Tasks, method and sizes must match (compare with {saved_cfg}); start a new output_dir for a "
            "different configuration")

    def _setup_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.tokenizer = default_tokenizer() if d.tokenizer == "default" else load_tokenizer(d.tokenizer)
        data_dir = None if d.data_dir == "sample" else d.data_dir
        self.registry = registry_from_config(d)
        if cfg.transfer.from_export:  # the export's own tasks keep their specs in this run's checkpoints and export
            self.registry = self.registry.merged(registry_for_export(cfg.transfer.from_export))
        splits = load_multitask_splits(d.tasks, data_dir, registry=self.registry,
                                       n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
                                       seed=d.split_seed, subset_seed=d.train_subset_seed, stsb_grid=d.stsb_grid,
                                       add_prefix=cfg.model.method == "finetune")
        self.protocol = protocol_fingerprint(splits)
        cache_dir = Path(d.cache_dir) if d.cache_dir else None
        if self.rank == 0:  # rank 0 fills the cache, the others read it
            self.data = tokenize_splits(splits, self.tokenizer, d.max_source_length, d.max_target_length, cache_dir)
        hdist.barrier()
        if self.rank != 0:
            self.data = tokenize_splits(splits, self.tokenizer, d.max_source_length, d.max_target_length, cache_dir)
        bucket = d.pad_to_multiple_of or (COMPILE_BUCKET if cfg.train.compile else 0)
        self.collate = Seq2SeqCollator(pad_token_id=self.tokenizer.pad_token_id, task_to_id=self.task_to_id,
                                       pad_to_multiple_of=bucket or None)
        # the training columns as Python lists: row access through `datasets` costs ~100x more per example
        self.train_columns = {t: columns_as_lists(self.data[t]["train"], ["input_ids", "labels"]) for t in self.tasks}
        sizes = {t: len(self.train_columns[t]["input_ids"]) for t in self.tasks}
        lengths = ({t: [len(x) for x in self.train_columns[t]["input_ids"]] for t in self.tasks}
                   if cfg.sampler.group_by_length else None)
        self.sampler = MultiTaskSampler(sizes, cfg.train.global_batch_size, seed=cfg.train.seed,
                                        temperature=cfg.sampler.temperature, mode=cfg.sampler.mode,
                                        group_by_length=cfg.sampler.group_by_length, lengths=lengths)
        log0(f"data: {', '.join(f'{t} {n}' for t, n in sizes.items())} training examples")

    def _resolve_backbone(self) -> str:
        """A ``preset:`` backbone is created once (seeded), saved into the run and loaded back from disk."""
        spec = self.cfg.model.backbone
        if not spec.startswith("preset:"):
            return spec
        target = self.output_dir / "backbone"
        error: Optional[ConfigError] = None
        if self.rank == 0 and not (target / "config.json").exists():
            torch.manual_seed(self.cfg.model.init_seed)
            model, _ = load_backbone(spec)
            need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (8 << 20)
            where = next(d for d in (self.output_dir, *self.output_dir.parents) if d.exists())
            free = shutil.disk_usage(where).free
            if free < need:  # before a half-written safetensors file, not after
                error = ConfigError(f"output_dir {self.output_dir} has {free / 2**20:.0f} MiB free; the {spec} backbone "
                                    f"saved into it needs about {need / 2**20:.0f} MiB: free space or choose another "
                                    "output_dir")
            else:
                model.save_pretrained(str(target))
            del model
            torch.manual_seed(self.cfg.train.seed + self.rank)
        if hdist.any_rank(error is not None):
            raise error or ConfigError(f"output_dir {self.output_dir} cannot hold the {spec} backbone (rank 0 says why)")
        return str(target)

    def _setup_model(self) -> None:
        m = self.cfg.model
        if self.cfg.transfer.from_export:  # few-shot transfer: the export's model, the new tasks added
            if self.cfg.deepspeed.build_sharded:
                raise ConfigError("transfer.from_export loads the export's model whole on each rank; set "
                                  "deepspeed.build_sharded=false")
            self.model = load_for_transfer(self.cfg.transfer, m, self.tasks)
            if self.cfg.train.precision != "fp32":  # exact, before the engine casts them to bf16/fp16
                self.transfer_weights = trainable_fp32(self.model)
            backbone = self.model.config.backbone_id
        else:
            backbone = self._resolve_backbone()
            # transformers 5 loads a directory in the dtype it was saved in: a bf16-saved backbone in an fp32 run
            # would stay bf16 (ZeRO 1-3 then fail on mixed dtypes, ZeRO-0 trains a bf16 model silently). fp32
            # asks for fp32; bf16/fp16 keep the saved dtype (DeepSpeed casts, without an fp32 copy on the way)
            dtype = torch.float32 if self.cfg.train.precision == "fp32" else None
            # straight into ZeRO-3 partitions in the engine's dtype under build_sharded
            source = build_sharded_backbone(backbone, self.ds_config) if self.cfg.deepspeed.build_sharded else backbone
            # the model section is an ArchConfig (plus run-only fields): its architecture part is the model's
            self.model = HyperscaleModel.from_backbone(source, self.tasks, torch_dtype=dtype, **m.arch_dict())
        # the data's task index -> the model's (they differ when the model knows more tasks than the run trains)
        self.model_task_ids = torch.tensor([self.model.task_index(t) for t in self.tasks])
        self.model_task_ids_device = self.model_task_ids.to(self.device)
        if m.dropout is not None:
            self.model.backbone.config.dropout_rate = m.dropout
            for mod in self.model.backbone.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.p = m.dropout
        if m.gradient_checkpointing:
            self.model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.cfg.train.compile:  # what transformers adds for reentrant checkpointing breaks the graph
                prepare_for_compile(self.model)
        if self.cfg.train.precision == "fp16":
            log0("warning: fp16 with T5 overflows easily (inf activations); bf16 is the supported precision")
        log0(f"model: {m.method} on {backbone}: {self._parameter_summary()}")

    def _parameter_summary(self) -> str:
        """What trains, in the words ``hyperscale params`` and ``hyperscale adapt`` use: the share of the backbone
        per task only where the trained weights are per task (finetune trains one model for every task), and
        under few-shot transfer the parameters that learn beside those held fixed."""
        report = self.model.parameter_report()
        trainable, backbone = report["trainable"], report["backbone"]
        if not self.model.config.uses_adapters:
            return f"all {trainable:,} parameters of the backbone train, one model for {report['tasks']} task(s)"
        if self.cfg.transfer.from_export:
            learn = trained_parameters(self.model, self.cfg.transfer.train)
            n_learn = sum(p.numel() for p in self.model.parameters() if id(p) in learn)
            return (f"{n_learn:,} parameters learn (transfer.train={self.cfg.transfer.train}), the other "
                    f"{trainable - n_learn:,} trainable ones are held fixed; backbone {backbone:,} frozen")
        return (f"{trainable:,} trainable parameters beside {backbone:,} frozen backbone ones "
                f"({report['percent_per_task']:.3f} % of the backbone per task)")

    # ================================================================== train
    @quiet_unless_verbose
    def train(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.finished:
            log0(f"the run is complete: its checkpoint {self.last_tag} is at step {self.state.step} >= "
                 f"train.max_steps={t.max_steps}; raise train.max_steps to train on")
            if not self.results and self.engine is not None:  # finished, but its final results were never written
                self._eval_and_track(final=True)
            return self.results
        bar = self._progress_bar()
        self.window = self._empty_window()
        # DeepSpeed records the global gradient norm only through its own optimizer wrappers (ZeRO, bf16,
        # fp16); with a bare fp32 optimizer (ZeRO-0, fp32) the trainer measures it itself
        e = self.engine
        measure_grad_norm = not (e.zero_optimization() or e.bfloat16_enabled() or e.fp16_enabled())
        # DeepSpeed's optimizer wrappers leave out a step whose gradients are inf/NaN; the bare fp32 optimizer does
        # not, so under train.nonfinite=skip the trainer does (one host read of the gradient norm per step)
        own_skip = measure_grad_norm and t.nonfinite == "skip"
        mb = t.micro_batch_size
        while self.state.step < t.max_steps:
            if self.preempt.should_stop():
                self._preempted()
            # ---- sample, forward, backward, step
            examples = self.sampler.next_rank_batch(self.rank, self.world)
            if cfg.distributed.check_task_sync:
                self._check_task_sync(examples)
            loss_sums = torch.zeros(len(self.tasks), device=self.device)
            counts = torch.zeros(2, len(self.tasks))  # on the host: examples and tokens per task
            undo = None
            for i in range(0, len(examples), mb):
                batch, task_ids = self._collate(examples[i:i + mb], counts)
                loss, per_example = eng.forward_loss(self.engine, batch, self._model_task_ids(task_ids, batch))
                self.engine.backward(loss)
                if measure_grad_norm and self.engine.is_gradient_accumulation_boundary():
                    self.own_grad_norm = self._trainable_grad_norm()
                    undo = self._undo_if_nonfinite() if own_skip else None
                self.engine.step()
                if undo is not None:
                    undo()
                loss_sums.index_add_(0, batch["task_index"], per_example.detach().float())
            self.state.step += 1
            self.state.sampler = self.sampler.state_dict()
            self.pending.append(torch.cat([loss_sums.unsqueeze(0), counts.to(self.device)]))
            self.pending_lr.append(self.engine.get_lr()[0])
            self.pending_skipped.append(undo is not None or not self.engine.was_step_applied())
            if bar is not None:
                bar.update(1)
            self._apply_nonfinite_policy()
            # ---- log
            final = self.state.step == t.max_steps
            if self.state.step % cfg.logging.every_steps == 0 or final:
                self._flush_stats(bar)
                self._log_window()
            # ---- eval
            is_best = False
            if (cfg.eval.every_steps and self.state.step % cfg.eval.every_steps == 0) or final:
                is_best = self._eval_and_track(final)
            # ---- save
            if (cfg.checkpoint.every_steps and self.state.step % cfg.checkpoint.every_steps == 0) or final or is_best:
                self.save(is_best=is_best)
        if bar is not None:
            bar.close()
        if t.compile:
            log0(f"torch.compile ({t.compile_backend}): {eng.compiled_graphs()} graph(s) compiled in this process")
        return self.results

    def _progress_bar(self) -> Any:
        if self.rank != 0 or not self.cfg.logging.progress_bar:
            return None
        return tqdm(total=self.cfg.train.max_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                    file=sys.stderr)

    def _collate(self, examples: list, counts: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """A micro-batch on the training device; adds its examples and tokens per task to ``counts`` (host).
        Returns (batch, task ids on the host for the model's adapter context)."""
        feats = []
        for task, idx in examples:
            cols = self.train_columns[task]
            feats.append({"input_ids": cols["input_ids"][int(idx)], "labels": cols["labels"][int(idx)], "task": task})
        batch = self.collate(feats)
        task_ids = batch.pop("task_ids")
        counts[0].index_add_(0, task_ids, torch.ones(len(task_ids)))
        counts[1].index_add_(0, task_ids, (batch["attention_mask"].sum(1) + (batch["labels"] != -100).sum(1)).float())
        on_device = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        on_device["task_index"] = task_ids.to(self.device, non_blocking=True)
        return on_device, task_ids

    def _model_task_ids(self, task_ids: torch.Tensor, batch: dict) -> torch.Tensor:
        """The model's task ids for a micro-batch. Eager: a host tensor (the model reads it to generate weights
        for the batch's distinct tasks only). Compiled: a device tensor, never read on the host inside the graph
        (``HyperscaleModel._traced_context``): one 0-dim id for a single-task micro-batch (the single-task
        path), else one id per example (weights for every task, picked per example)."""
        ids = self.model_task_ids[task_ids]
        if not self.cfg.train.compile:
            return ids
        on_device = self.model_task_ids_device[batch["task_index"]]
        return on_device[0] if bool((ids == ids[0]).all()) else on_device

    @torch.no_grad()
    def _undo_if_nonfinite(self) -> Optional[Callable[[], None]]:
        """Bare fp32 optimizer, ``train.nonfinite=skip``: when the (all-reduced, so the same on every rank) gradients
        are not finite, zero them and return a function that, called after ``engine.step()``, puts the trainable
        weights, the optimizer state and the learning-rate schedule back as they were (DeepSpeed's own wrappers
        leave such a step out the same way). The copy is made only for such a step."""
        if bool(torch.isfinite(self.own_grad_norm)):
            return None
        e = self.engine
        params = [p for p in e.module.parameters() if p.requires_grad]
        values = [p.detach().clone() for p in params]
        optimizer = copy.deepcopy(e.optimizer.state_dict())
        schedule = copy.deepcopy(e.lr_scheduler.state_dict()) if e.lr_scheduler is not None else None
        for p in params:
            if p.grad is not None:
                p.grad.zero_()

        def undo() -> None:
            with torch.no_grad():
                for p, v in zip(params, values):
                    p.copy_(v)
            e.optimizer.load_state_dict(optimizer)
            if schedule is not None:
                e.lr_scheduler.load_state_dict(schedule)
        return undo

    def _apply_nonfinite_policy(self) -> None:
        """After each step: count a step left out for non-finite losses or gradients and stop the run where
        ``train.nonfinite`` says so. Reads only host values (DeepSpeed's overflow flag is already agreed across ranks)."""
        t, step, lr = self.cfg.train, self.state.step, self.pending_lr[-1]
        if not self.pending_skipped[-1]:
            self.state.skipped_in_a_row = 0
            return
        self.state.skipped_steps += 1
        self.state.skipped_in_a_row += 1
        in_a_row = self.state.skipped_in_a_row
        tolerated = t.nonfinite == "skip" or t.precision == "fp16"  # fp16: the loss scaler calibrates by skipping
        if tolerated and in_a_row < t.max_skipped_steps:
            log0(f"step {step}: non-finite loss or gradients; the step was left out ({in_a_row} in a row, the run "
                 f"stops at {t.max_skipped_steps})")
            return
        stats = self._flush_stats()  # a non-finite loss of a step the policy does not leave out raises here
        report = self._write_diagnostic(step, stats[-1], lr)
        if tolerated:
            raise TrainingDivergedError(
                f"{in_a_row} optimizer steps in a row (up to step {step}) had non-finite losses or gradients and were "
                f"left out (train.max_skipped_steps={t.max_skipped_steps}); lower train.lr (now {t.lr:g}) or check the "
                f"data. The last checkpoint is {self.last_tag or 'none'}; details in {report}")
        raise TrainingDivergedError(
            f"the gradients became non-finite (inf/NaN) at step {step} (lr {lr:.3g}); lower train.lr "
            f"or check the data, or set train.nonfinite=skip to leave such steps out. Nothing from step {step} on was "
            f"saved; the last checkpoint is {self.last_tag or 'none'}; details in {report}")

    @torch.no_grad()
    def _trainable_grad_norm(self) -> torch.Tensor:
        """L2 norm of the (already all-reduced) gradients before clipping, as DeepSpeed's clipping sees them;
        a device tensor (read on the host only when logged)."""
        norms = [p.grad.detach().float().norm() for p in self.engine.module.parameters()
                 if p.requires_grad and p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.device)

    def _check_task_sync(self, examples: list) -> None:
        """Debug check (``distributed.check_task_sync``): the slices the ranks are about to train on,
        put together in rank order, must be exactly the global batch of this step that every rank
        derives from (seed, step). Fails loudly, naming the ranks that disagree."""
        step = self.state.step
        expected = [(str(t), int(i)) for t, i in self.sampler.global_batch(step)]
        mine = [(str(t), int(i)) for t, i in examples]
        slices = hdist.all_gather_object(mine)
        per_rank = len(expected) // self.world
        bad = [r for r, got in enumerate(slices) if got != expected[r * per_rank:(r + 1) * per_rank]]
        if bad:
            tasks = {r: sorted({t for t, _ in slices[r]}) for r in bad}
            raise RuntimeError(
                f"task sync check failed at step {step} on rank {self.rank}: ranks {bad} train on examples that "
                f"are not their slice of the global batch (their tasks: {tasks}); different seeds, data or "
                "sampler state across ranks?")

    # ---------------------------------------------------------------- statistics
    def _empty_window(self) -> dict:
        return {"loss_sum": torch.zeros(len(self.tasks)), "count": torch.zeros(len(self.tasks)), "tokens": 0.0,
                "start": time.perf_counter(), "lr": 0.0, "steps": 0}

    def _flush_stats(self, bar: Any = None) -> Optional[torch.Tensor]:
        """Bring the pending steps' statistics to the host: one all-reduce and one copy for all of them.
        Writes each step's line of ``train_log.jsonl`` and the samples/tokens counters; returns the statistics
        ([steps, 3, tasks]: loss sums, examples, tokens per task) or None when nothing was pending.
        A non-finite loss stops the run unless its step was left out under ``train.nonfinite=skip``."""
        if not self.pending:
            return None
        stats = hdist.all_reduce(torch.stack(self.pending)).cpu()  # [steps, 3, tasks]
        first = self.state.step - len(self.pending) + 1
        losses = stats[:, 0].sum(1) / stats[:, 1].sum(1).clamp(min=1)
        skipped = torch.tensor(self.pending_skipped, dtype=torch.bool)
        left_out = skipped if self.cfg.train.nonfinite == "skip" else torch.zeros_like(skipped)
        bad = ~torch.isfinite(losses) & ~left_out
        if bad.any():  # the same on every rank (all-reduced): all stop together
            k = int(bad.nonzero()[0])
            report = self._write_diagnostic(first + k, stats[k], self.pending_lr[k])
            raise TrainingDivergedError(
                f"the training loss became {float(losses[k])} at step {first + k} (lr {self.pending_lr[k]:.3g}); lower "
                f"train.lr or check the data, or set train.nonfinite=skip to leave such steps out. Nothing from step "
                f"{first + k} on was saved; the last checkpoint is {self.last_tag or 'none'}; details in {report}")
        for k, (s, lr) in enumerate(zip(stats, self.pending_lr)):
            loss = float(s[0].sum() / s[1].sum().clamp(min=1))
            record = {"step": first + k, "loss": loss if math.isfinite(loss) else None, "lr": lr,
                      "tasks": {self.tasks[i]: int(c) for i, c in enumerate(s[1].tolist()) if c}}
            if skipped[k]:
                record["skipped"] = True
            self.logger.record(record)
            if not skipped[k]:  # a left-out step's loss is not part of the window's mean
                self.window["loss_sum"] += s[0]
                self.window["count"] += s[1]
                self.window["steps"] += 1
            self.window["tokens"] += float(s[2].sum())
            self.window["lr"] = lr
            self.state.samples_seen += int(s[1].sum())
            self.state.tokens_seen += int(s[2].sum())
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        self.pending, self.pending_lr, self.pending_skipped = [], [], []
        return stats

    def _grad_norm(self) -> Optional[float]:
        """The last step's gradient norm: DeepSpeed's where its optimizer records one, else the trainer's own."""
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = self.own_grad_norm
        return None if grad_norm is None else float(grad_norm)

    def _write_diagnostic(self, step: int, stats: torch.Tensor, lr: float) -> Path:
        """``RUN/diverged-step-N.json``: what a user needs to see why a run stopped (rank 0 writes it)."""
        per_task = {t: {"examples": int(stats[1][i]), "loss": float(stats[0][i] / stats[1][i])}
                    for i, t in enumerate(self.tasks) if stats[1][i] > 0}
        grad_norm = self._grad_norm()
        report = {"step": step, "lr": lr, "tasks": per_task, "grad_norm": grad_norm,
                  "nonfinite_policy": self.cfg.train.nonfinite, "skipped_steps": self.state.skipped_steps,
                  "skipped_in_a_row": self.state.skipped_in_a_row,
                  "last_checkpoint": self.last_tag}
        path = self.output_dir / f"diverged-step-{step:08d}.json"
        if self.rank == 0:
            path.write_text(json.dumps(report, indent=2) + "\n")
        return path

    def _log_window(self) -> None:
        w, step = self.window, self.state.step
        seconds = max(time.perf_counter() - w["start"], 1e-9)
        count = w["count"].sum().clamp(min=1)
        scalars = {"train/loss": float(w["loss_sum"].sum() / count), "train/lr": w["lr"],
                   "train/samples_per_s": float(w["count"].sum()) / seconds,
                   "train/tokens_per_s": w["tokens"] / seconds,
                   "train/skipped_steps": float(self.state.skipped_steps)}
        if self.cfg.train.compile:  # bounded by the length buckets: a growing count means recompilation
            scalars["train/compiled_graphs"] = float(eng.compiled_graphs())
        grad_norm = self._grad_norm()
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        for i, task in enumerate(self.tasks):
            scalars[f"train/task_count/{task}"] = float(w["count"][i])
            if w["count"][i] > 0:
                scalars[f"train/loss/{task}"] = float(w["loss_sum"][i] / w["count"][i])
        self.logger.scalars(step, scalars)
        self.logger.flush()
        if not self.cfg.logging.progress_bar:  # batch jobs: a line per window in the log instead of a bar
            log0(f"step {step}/{self.cfg.train.max_steps}  loss {scalars['train/loss']:.4f}  lr {w['lr']:.3g}  "
                 f"{scalars['train/samples_per_s']:.1f} samples/s")
        self.window = self._empty_window()

    # ================================================================== eval
    def _eval_and_track(self, final: bool) -> bool:
        self._flush_stats()
        splits = [s for s in self.cfg.eval.splits if final or s == "validation"]
        results = {s: self.evaluate(s) for s in splits}
        self.results.update(results)
        if "validation" not in results:
            return False
        score = results["validation"]["average"]["mean_all_metrics"]
        if self.state.best_metric is None or score > self.state.best_metric:
            self.state.best_metric = score
            self.state.best_tag = ckpt.tag_for(self.state.step)
            return True
        return False

    def evaluate(self, split: str) -> dict:
        with eng.eager_context(self.engine):
            return self._evaluate(split)

    def _evaluate(self, split: str) -> dict:
        e = self.cfg.eval
        module = self.engine.module
        was_training = module.training
        module.eval()
        per_task = {}
        t0 = time.perf_counter()
        n_examples = 0
        for task in self.tasks:
            ds = self.data[task][split]
            n = len(ds) if e.max_examples is None else min(len(ds), e.max_examples)
            rows = ds.select(range(n))
            spec = self.registry.get(task)
            labels = spec.rank_labels()
            preds = predict_task(module, self.tokenizer, task, rows["source"], mode=e.mode, label_strings=labels,
                                 max_target_tokens=spec.max_target_length + 1, batch_size=e.batch_size,
                                 device=self.device, max_source_length=self.cfg.data.max_source_length,
                                 synced_gpus=self.cfg.deepspeed.zero_stage == 3 and self.world > 1)
            per_task[task] = compute_task_metrics(spec, preds, rows["target"])
            if self.rank == 0 and self.cfg.logging.verbose:  # progress on stderr: a line per task
                metrics = "  ".join(f"{k} {v:.2f}" for k, v in per_task[task].items())
                tqdm.write(f"[hyperscale] eval {split} step {self.state.step}: {task} ({n} examples) {metrics}  "
                           f"[{time.perf_counter() - t0:.1f} s]", file=sys.stderr)  # above the bar, not inside it
            n_examples += n
        if was_training:
            module.train()
        result = {"step": self.state.step, "split": split, "tasks": per_task, "average": average_metrics(per_task),
                  "seconds": time.perf_counter() - t0}
        if self.rank == 0 and not self.cfg.logging.verbose:  # one line per evaluation (per task: logging.verbose)
            mean = result["average"].get("mean_all_metrics")
            tqdm.write(f"[hyperscale] eval {split} step {self.state.step}: {len(per_task)} tasks, {n_examples:,} "
                       "examples" + (f", mean of all metrics {mean:.2f}" if mean is not None else "")
                       + f"  [{result['seconds']:.1f} s]", file=sys.stderr)  # above the bar, not inside it
        if self.rank == 0:
            out = self.output_dir / "eval"
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{split}-step-{self.state.step:08d}.json").write_text(json.dumps(result, indent=2) + "\n")
            scalars = {f"eval/{split}/{k}": v for k, v in result["average"].items()}
            for task, metrics in per_task.items():
                scalars.update({f"eval/{split}/{task}/{k}": v for k, v in metrics.items()})
            self.logger.scalars(self.state.step, scalars)
        return result

    # ================================================================== save / load
    def save(self, is_best: bool = False) -> str:
        """Checkpoint this step on every rank. A step saved already by this process (a preemption right after
        a checkpoint step) is not written again."""
        tag = ckpt.tag_for(self.state.step)
        if self.last_tag == tag:
            return tag
        self._flush_stats()
        files = {"hyperscale_config.json": json.dumps(self.model.config.to_dict(), indent=2, sort_keys=True) + "\n",
                 "run_config.yaml": self.cfg.to_yaml(),
                 # the full spec of every task of your own the model knows: exports carry them (README "Your own tasks")
                 "task_specs.json": json.dumps(self.registry.records(self.model.config.tasks), indent=2) + "\n"}
        tok_dir = self.output_dir / "tokenizer"
        if self.rank == 0 and not tok_dir.exists():
            self.tokenizer.save_pretrained(str(tok_dir))
        files["tokenizer"] = tok_dir
        self.last_tag = ckpt.save(self.engine, self.ckpt_root, self.state, files, self.cfg.checkpoint.keep_last,
                                  is_best)
        log0(f"saved checkpoint {self.ckpt_root / self.last_tag}")
        return self.last_tag

    def load(self, ckpt_dir: Path) -> None:
        saved = ckpt.read_trainer_state(ckpt_dir)
        if saved is not None:  # check before DeepSpeed loads (it fails on mismatched shapes, unclearly)
            self._check_backbone(ckpt_dir, saved.backbone_hash)
        state = ckpt.load(self.engine, ckpt_dir, universal=self.universal_resume)
        if saved is None:  # an old checkpoint without trainer_state.json: check what DeepSpeed's client state says
            self._check_fingerprint(ckpt_dir, state.config_fingerprint)
            self._check_backbone(ckpt_dir, state.backbone_hash)
        self.state = state
        self.sampler.load_state_dict(state.sampler)
        note = eng.continue_schedule(self.engine, state.schedule, self.cfg.train.lr)
        log0(f"resumed from {ckpt_dir} at step {state.step}" + (f"; {note}" if note else ""))

    def _check_backbone(self, ckpt_dir: Path, saved_hash: Optional[str]) -> None:
        if saved_hash and self.model.config.backbone_hash and saved_hash != self.model.config.backbone_hash:
            raise ConfigError(f"cannot resume from {ckpt_dir}: the backbone's weights differ from the ones it was "
                              "trained on (hash mismatch); load the original backbone")

    def _preempted(self) -> None:
        """Save this step, requeue under SLURM, and exit: 0 under SLURM (the job goes on, requeued or cancelled
        on purpose), :data:`EXIT_STOPPED` elsewhere, so that ``hyperscale train && next-step`` does not go on with
        an unfinished run."""
        log0(f"preemption signal: saving at step {self.state.step}")
        self.save()
        self.preempt.requeue()
        self.logger.close()
        hdist.barrier()
        under_slurm = bool(os.environ.get("SLURM_JOB_ID"))
        if not under_slurm:
            log0(f"stopped at step {self.state.step} of {self.cfg.train.max_steps} by a signal; continue with "
                 "--resume auto")
        sys.exit(0 if under_slurm else EXIT_STOPPED)

    # ================================================================== finish
    @quiet_unless_verbose
    def finish(self) -> dict:
        """Release the engine and the signal handlers (:meth:`_release`), export the last checkpoint to standalone
        weights (unless that export exists) and print the result table (rank 0)."""
        summary = {"checkpoint": str(self.ckpt_root / (self.last_tag or "")),
                   "tensorboard": str(self.output_dir / "tensorboard")}
        trained = self.engine is not None  # a finished run resumed again has its results on disk already
        self._release()
        if self.rank == 0:
            summary["export"] = str(self._ensure_export())
            out = self.output_dir / "results.json"
            if trained:
                self._write_results(out)
            print(format_results(self.results, notice=self._results_notice()), flush=True)
            for k, v in summary.items():
                print(f"{k:>12}: {v}", flush=True)
        hdist.barrier()
        if self.logger is not None:
            self.logger.close()
        if self.run_lock is not None:  # a process may run several recipes (hyperscale adapt, sweep)
            self.run_lock.close()
            self.run_lock = None
        return summary

    def _release(self) -> None:
        """Training is over: put back the signal handlers this run installed, and free the engine, the model and the
        optimizer state (on every rank, before rank 0 exports: an 11B run's export then has the host to itself)."""
        if self.preempt is not None:
            self.preempt.uninstall()
        if self.engine is not None:
            self.engine.destroy()
        self.engine = self.model = None
        gc.collect()
        release_freed_memory()

    def _results_notice(self) -> Optional[str]:
        spec = self.cfg.model.backbone
        if not spec.startswith("preset:"):
            return None
        return (f"note: model.backbone={spec} is a randomly initialised T5 (no pretrained weights), so these "
                "scores are at chance level: the run checks the pipeline. For real numbers train on a pretrained "
                "backbone, e.g. `hyperscale train configs/glue-t5-base.yaml` (downloads t5-base and GLUE).")

    def _ensure_export(self) -> Path:
        """``RUN/export`` holds the export of the last checkpoint; an export of an earlier step stays where it
        is and this one goes to ``RUN/export-step-N``."""
        for export_dir in (self.output_dir / "export", self.output_dir / f"export-step-{self.state.step:08d}"):
            config = export_dir / "hyperscale_config.json"
            if not config.exists():
                export_checkpoint(self.ckpt_root / self.last_tag, export_dir)
                return export_dir
            if self._export_step(export_dir) == self.state.step:
                return export_dir
        return export_dir

    def _export_step(self, export_dir: Path) -> Optional[int]:
        try:
            return int(json.loads((export_dir / "export.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_results(self, out: Path) -> None:
        if out.exists():  # a resumed run finishing again: keep the earlier summary under its step
            try:
                earlier = max(int(r["step"]) for r in json.loads(out.read_text()).values())
            except (ValueError, KeyError, TypeError, AttributeError):
                earlier = "unknown"
            keep = self.output_dir / f"results.step-{earlier}.json"
            if not keep.exists():
                os.replace(out, keep)
        out.write_text(json.dumps(self.results, indent=2) + "\n")


def format_results(results: dict, notice: Optional[str] = None) -> str:
    if not results:
        return "(no evaluation results)"
    lines = [notice] if notice else []
    for split, res in results.items():
        lines.append(f"\n{split} (step {res['step']}):")
        lines.append(f"  {'task':<10} metrics")
        for task, metrics in res["tasks"].items():
            lines.append(f"  {task:<10} " + "  ".join(f"{k} {v:6.2f}" for k, v in metrics.items()))
        avg = res["average"]
        lines.append(f"  {'average':<10} " + "  ".join(f"{k} {v:6.2f}" for k, v in avg.items()))
    return "\n".join(lines)
