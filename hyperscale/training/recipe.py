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

The parts: :mod:`.rundir` (the output_dir lock, run files, free space), :mod:`.resume` (the resume point and its
checks), :mod:`.build` (data, sampler and model from the config), :mod:`.step_stats` (statistics kept on the device,
flushed once per logging window), :mod:`.nonfinite` (the non-finite policy), :mod:`.evaluate` (the one evaluation)
and :mod:`.results` (eval files, results.json, the table, the export).

A resume on another number of ranks goes through DeepSpeed's universal checkpoint format; one run at a time
holds ``output_dir`` (a lock). A non-finite loss or gradient stops the run with a diagnostic
(``train.nonfinite=abort``), or leaves that step out, stopping after ``train.max_skipped_steps`` in a row (``skip``).

Raises (all :class:`hyperscale.errors.HyperscaleError`): ``ConfigError`` (bad or incompatible configuration, a
resume under another ZeRO stage, too little disk), ``RunExistsError`` (``output_dir`` holds a run and no
``--resume``, or another run holds its lock), ``CheckpointNotFoundError`` / ``CheckpointError`` (nothing to
resume at an explicit path, a damaged or unsafe checkpoint) and ``TrainingDivergedError``.
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ..data.sampler import MultiTaskSampler
from ..data.specs import TaskRegistry
from ..data.tokenization import Seq2SeqCollator
from ..modeling.model import HyperscaleModel
from . import build
from . import checkpoint as ckpt
from . import distributed as hdist
from . import engine as eng
from . import nonfinite
from . import resume as rs
from . import results as res
from . import rundir
from .auto import cpu_threads
from .config import RunConfig
from .ds_config import build_ds_config
from .evaluate import run_evaluation
from .geometry import per_rank_batch
from .host_memory import release_freed_memory
from .logging import RunLogger, quiet_unless_verbose
from .preemption import PreemptionHandler
from .state import TrainState, seed_everything
from .step_stats import StepStats, trainable_grad_norm
from .task_sync import check_task_sync
from .transfer import check_export_dir, restore_fp32_masters

log0 = hdist.log0


class Recipe:
    def __init__(self, cfg: RunConfig, resume: Optional[str] = None):
        self.cfg = cfg
        self.resume = resume if resume is not None else cfg.checkpoint.resume
        self.output_dir = Path(cfg.output_dir).resolve()
        self.ckpt_root = self.output_dir / "checkpoints"
        self.tasks: list[str] = list(cfg.data.tasks)
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
        self.micro_batch: Optional[build.MicroBatcher] = None  # sampled examples -> a micro-batch and its model task ids
        self.transfer_weights: Optional[dict] = None  # transfer runs: the export's exact fp32 trainable weights
        self.engine: Any = None
        self.logger: Optional[RunLogger] = None
        self.preempt: Optional[PreemptionHandler] = None
        self.run_lock: Optional[rundir.RunLock] = None  # rank 0's lock on output_dir (released by finish() or the process's end)
        # mutable training state: checkpointed (TrainState) or derived per process
        self.state = TrainState()
        self.results: dict = {}  # split -> evaluation result of this process's latest evaluation
        self.last_tag: Optional[str] = None  # the newest checkpoint tag of this run
        self.stats = StepStats(self.tasks, cfg.train.nonfinite, self.output_dir, self.rank)  # per-step, on the device
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
        self.stats = StepStats(self.tasks, cfg.train.nonfinite, self.output_dir, self.rank)
        per_rank_batch(cfg.train.global_batch_size, self.world)  # refused before anything is written
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.train.cpu_threads, self.world))
            log0(f"CPU: {torch.get_num_threads()} thread(s) per rank "
                 f"(train.cpu_threads={cfg.train.cpu_threads or 'auto'})")
        self.run_lock = rundir.lock_output_dir(self.output_dir, self.rank)
        rundir.check_output_dir(self.output_dir, self.resume)
        # the checkpoint to continue from, refused if incompatible before data, model and engine are built
        self.resume_from, saved = rs.resume_point(cfg, self.resume, self.output_dir)
        # numbers for the auto settings, before any data is read
        self.cfg = cfg = rs.resolve_auto_settings(cfg, saved, self.resume_from, self.rank, self.world, self.device.type)
        if saved is not None:
            self.last_tag = self.resume_from.name
            self.finished = saved.step >= cfg.train.max_steps
            if self.finished and (self.output_dir / "results.json").is_file():
                self.state = saved  # nothing to build: finish() reports the finished run
                self.results = json.loads((self.output_dir / "results.json").read_text())
                return
            self.universal_resume = rs.check_topology(cfg, self.resume_from, saved, self.world)
        if cfg.transfer.from_export:
            check_export_dir(cfg.transfer)  # before the data is read
        seed_everything(cfg.train.seed + self.rank)
        d = build.build_data(cfg, self.rank)
        self.tokenizer, self.registry, self.data, self.protocol = d.tokenizer, d.registry, d.data, d.protocol
        self.collate, self.train_columns, self.sampler = d.collate, d.train_columns, d.sampler
        if saved is not None and saved.sampler:
            rs.check_sampler_state(self.sampler, self.resume_from, saved)
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
        rundir.check_free_space(self.output_dir, self.model, self.rank)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            rundir.write_once(self.output_dir, "config.yaml", cfg.to_yaml(), self.state.step)
            rundir.write_once(self.output_dir, "data_protocol.json", json.dumps(self.protocol, indent=2) + "\n",
                              self.state.step)
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

    def _setup_model(self) -> None:
        self.model, self.transfer_weights = build.build_model(self.cfg, self.ds_config, self.output_dir, self.rank)
        self.micro_batch = build.MicroBatcher(self.collate, self.train_columns, self.model, self.tasks, self.device,
                                              compiled=self.cfg.train.compile)

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
        self.stats.window = self.stats.empty_window()
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
                check_task_sync(self.sampler, self.state.step, examples, self.world, self.rank)
            loss_sums = torch.zeros(len(self.tasks), device=self.device)
            counts = torch.zeros(2, len(self.tasks))  # on the host: examples and tokens per task
            undo = None
            for i in range(0, len(examples), mb):
                batch, model_task_ids = self.micro_batch(examples[i:i + mb], counts)
                loss, per_example = eng.forward_loss(self.engine, batch, model_task_ids)
                self.engine.backward(loss)
                if measure_grad_norm and self.engine.is_gradient_accumulation_boundary():
                    self.own_grad_norm = trainable_grad_norm(self.engine.module, self.device)
                    undo = nonfinite.undo_if_nonfinite(self.engine, self.own_grad_norm) if own_skip else None
                self.engine.step()
                if undo is not None:
                    undo()
                loss_sums.index_add_(0, batch["task_index"], per_example.detach().float())
            self.state.step += 1
            self.state.sampler = self.sampler.state_dict()
            self.stats.add(loss_sums, counts, self.engine.get_lr()[0],
                           skipped=undo is not None or not self.engine.was_step_applied())
            if bar is not None:
                bar.update(1)
            if nonfinite.must_stop(cfg, self.state, self.stats.pending_skipped[-1]):
                self._stop_nonfinite()
            # ---- log
            final = self.state.step == t.max_steps
            if self.state.step % cfg.logging.every_steps == 0 or final:
                self._flush_stats(bar)
                self.stats.log_window(self.state, self.logger, t.max_steps, self._grad_norm(),
                                      eng.compiled_graphs() if t.compile else None,
                                      log_line=not cfg.logging.progress_bar)  # batch jobs: a line per window
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

    # ---------------------------------------------------------------- statistics
    def _flush_stats(self, bar: Any = None) -> Optional[torch.Tensor]:
        """The pending steps' statistics to the host and train_log.jsonl (:meth:`StepStats.flush`)."""
        return self.stats.flush(self.state, self.logger, self.last_tag, self._grad_norm, bar)

    def _grad_norm(self) -> Optional[float]:
        """The last step's gradient norm: DeepSpeed's where its optimizer records one, else the trainer's own."""
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = self.own_grad_norm
        return None if grad_norm is None else float(grad_norm)

    def _stop_nonfinite(self) -> None:
        """``train.nonfinite`` stops the run at this step: the statistics flushed (a non-finite loss of a step the
        policy does not leave out raises there), the diagnostic written, the error raised."""
        lr = self.stats.pending_lr[-1]
        stats = self._flush_stats()
        report = nonfinite.write_diagnostic(self.output_dir, self.rank, self.tasks, self.state.step, stats[-1], lr,
                                            self._grad_norm(), self.cfg.train.nonfinite, self.state, self.last_tag)
        raise nonfinite.stop_error(self.cfg, self.state, lr, self.last_tag, report)

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
            result = run_evaluation(self.engine.module, self.tokenizer, self.registry, self.data, self.tasks, split,
                                    self.cfg, self.state.step, self.world, self.device, console=self.rank == 0)
        if self.rank == 0:
            res.write_eval(self.output_dir, result)
            self.logger.scalars(self.state.step, res.eval_scalars(result))
        return result

    # ================================================================== save / load
    def save(self, is_best: bool = False) -> str:
        """Checkpoint this step on every rank. A step saved already by this process (a preemption right after
        a checkpoint step) is not written again."""
        tag = ckpt.tag_for(self.state.step)
        if self.last_tag == tag:
            return tag
        self._flush_stats()
        files = ckpt.run_files(self.output_dir, self.rank, self.model.config, self.cfg.to_yaml(),
                               self.registry.records(self.model.config.tasks), self.tokenizer)
        self.last_tag = ckpt.save(self.engine, self.ckpt_root, self.state, files, self.cfg.checkpoint.keep_last,
                                  is_best)
        log0(f"saved checkpoint {self.ckpt_root / self.last_tag}")
        return self.last_tag

    def load(self, ckpt_dir: Path) -> None:
        saved = ckpt.read_trainer_state(ckpt_dir)
        if saved is not None:  # check before DeepSpeed loads (it fails on mismatched shapes, unclearly)
            rs.check_backbone(ckpt_dir, saved.backbone_hash, self.model.config.backbone_hash)
        state = ckpt.load(self.engine, ckpt_dir, universal=self.universal_resume)
        if saved is None:  # an old checkpoint without trainer_state.json: check what DeepSpeed's client state says
            rs.check_fingerprint(self.cfg, ckpt_dir, state.config_fingerprint)
            rs.check_backbone(ckpt_dir, state.backbone_hash, self.model.config.backbone_hash)
        self.state = state
        self.sampler.load_state_dict(state.sampler)
        note = eng.continue_schedule(self.engine, state.schedule, self.cfg.train.lr)
        log0(f"resumed from {ckpt_dir} at step {state.step}" + (f"; {note}" if note else ""))

    def _preempted(self) -> None:
        """Save this step on every rank, then requeue under SLURM and exit (:meth:`PreemptionHandler.exit_run`)."""
        log0(f"preemption signal: saving at step {self.state.step}")
        self.save()
        self.logger.close()
        self.preempt.exit_run(self.state.step, self.cfg.train.max_steps)

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
            summary["export"] = str(res.ensure_export(self.output_dir, self.ckpt_root / (self.last_tag or ""),
                                                         self.state.step))
            if trained:
                res.write_results(self.output_dir, self.results)
            print(res.format_results(self.results, notice=res.results_notice(self.cfg.model.backbone)), flush=True)
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
