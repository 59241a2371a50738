"""The hyperscale training recipe: ``python -m hyperscale.train [CONFIG] [key=value ...] [--resume auto]``.

Runs as a plain process, under ``torchrun``, the ``deepspeed`` launcher or ``srun``. The recipe has
torchtune's shape: ``setup`` (distributed, data, model, engine, resume), ``train`` (a loop that
reads top to bottom: sample, forward, backward, step, then log, eval and save on their own
intervals), ``evaluate``, ``save`` and ``load``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .training import checkpoint as ckpt
from .training.config import ConfigError, RunConfig, load_config, resume_differences
from .training.ds_config import build_ds_config
from .training.logging import RunLogger
from .training.state import TrainState, seed_everything


def log0(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[hyperscale] {msg}", flush=True)


def _init_distributed(cfg: RunConfig) -> tuple[int, int, int]:
    """Derive the rank environment (torchrun / deepspeed / SLURM / plain) and start the process group."""
    try:
        from .launch import setup_distributed_env
    except ImportError:  # pragma: no cover - launch module missing
        setup_distributed_env = None
    if setup_distributed_env is not None:
        env = setup_distributed_env()
        rank, local_rank, world = env.rank, env.local_rank, env.world_size
    else:
        os.environ.setdefault("RANK", "0"), os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1"), os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    import deepspeed

    deepspeed.init_distributed(timeout=timedelta(seconds=cfg.distributed.timeout_s))
    return rank, local_rank, world


def _exclude_frozen_aliases(engine: Any) -> None:
    """DeepSpeed's ``exclude_frozen_parameters`` drops frozen parameters by their first name only, so
    tied aliases of frozen weights (T5's ``encoder.embed_tokens``, ``decoder.embed_tokens``,
    ``lm_head``) still land in every checkpoint: for t5-base that is 3 x 95 MB of backbone. Drop them
    too, by every name a frozen parameter has."""
    original = engine.module_state_dict

    def module_state_dict(*args: Any, exclude_frozen_parameters: bool = False, **kwargs: Any) -> dict:
        sd = original(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        if exclude_frozen_parameters:
            for name, p in engine.module.named_parameters(remove_duplicate=False):
                if not p.requires_grad:
                    sd.pop(name, None)
        return sd

    engine.module_state_dict = module_state_dict


class Recipe:
    def __init__(self, cfg: RunConfig, resume: Optional[str] = None):
        self.cfg = cfg
        self.resume = resume if resume is not None else cfg.checkpoint.resume
        self.output_dir = Path(cfg.output_dir).resolve()
        self.ckpt_root = self.output_dir / "checkpoints"
        self.state = TrainState()
        self.preempt = None

    # ================================================================== setup
    def setup(self) -> None:
        cfg = self.cfg
        self.rank, self.local_rank, self.world = _init_distributed(cfg)
        self._check_output_dir()
        self._check_resumable()
        self.device = self._device()
        seed_everything(cfg.train.seed + self.rank)
        self._setup_data()
        self.ds_config = build_ds_config(cfg, self.world)
        self._setup_model()
        self._setup_engine()
        resume_from = ckpt.resolve_checkpoint(self.resume, self.output_dir) if self.resume else None
        if resume_from is not None:
            self.load(resume_from)
        elif self.resume and self.resume != "auto":
            raise FileNotFoundError(f"nothing to resume at {self.resume}")
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_once("config.yaml", cfg.to_yaml())
            self._write_once("data_protocol.json", json.dumps(self.protocol, indent=2) + "\n")
        self.logger = RunLogger(self.output_dir, self.rank, cfg.logging.tensorboard,
                                resume_step=self.state.step if resume_from is not None else None)
        if resume_from is None:
            self.logger.text("config", "```\n" + cfg.to_yaml() + "\n```")
        self._setup_preemption()

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

    def _check_output_dir(self) -> None:
        has_run = ckpt.find_latest(self.ckpt_root) is not None or (self.output_dir / "train_log.jsonl").exists()
        if has_run and not self.resume:
            raise FileExistsError(
                f"output_dir {self.output_dir} already holds a run; continue it with --resume auto, or choose "
                "another output_dir (nothing is overwritten)")

    def _check_resumable(self) -> None:
        """Refuse an incompatible resume before data, model and engine are built (and before DeepSpeed
        fails on mismatched shapes): the checkpoint's model/tasks fingerprint must match this config's."""
        ckpt_dir = ckpt.resolve_checkpoint(self.resume, self.output_dir) if self.resume else None
        saved = ckpt.read_trainer_state(ckpt_dir) if ckpt_dir is not None else None
        if saved is not None:
            self._check_fingerprint(ckpt_dir, saved.config_fingerprint)

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

    def _device(self) -> torch.device:
        want = self.cfg.train.device
        if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise RuntimeError("train.device=cuda but no CUDA device is visible")
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def _setup_data(self) -> None:
        from .data.loading import columns_as_lists, load_multitask_splits, protocol_fingerprint
        from .data.sampler import MultiTaskSampler
        from .data.tokenization import Seq2SeqCollator, default_tokenizer, load_tokenizer, tokenize_splits

        cfg, d = self.cfg, self.cfg.data
        self.tokenizer = default_tokenizer() if d.tokenizer == "default" else load_tokenizer(d.tokenizer)
        data_dir = None if d.data_dir == "sample" else d.data_dir
        splits = load_multitask_splits(d.tasks, data_dir, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
                                       seed=d.split_seed, stsb_grid=d.stsb_grid,
                                       add_prefix=cfg.model.method == "finetune")
        self.protocol = protocol_fingerprint(splits)
        cache_dir = Path(d.cache_dir) if d.cache_dir else None
        if self.rank == 0:  # rank 0 fills the cache, the others read it
            self.data = tokenize_splits(splits, self.tokenizer, d.max_source_length, d.max_target_length, cache_dir)
        self._barrier()
        if self.rank != 0:
            self.data = tokenize_splits(splits, self.tokenizer, d.max_source_length, d.max_target_length, cache_dir)
        self.tasks = list(d.tasks)
        self.task_to_id = {t: i for i, t in enumerate(self.tasks)}
        self.collate = Seq2SeqCollator(pad_token_id=self.tokenizer.pad_token_id, task_to_id=self.task_to_id)
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
        if self.rank == 0 and not (target / "config.json").exists():
            from .modeling.model import load_backbone

            torch.manual_seed(self.cfg.model.init_seed)
            model, _ = load_backbone(spec)
            model.save_pretrained(str(target))
            torch.manual_seed(self.cfg.train.seed + self.rank)
        self._barrier()
        return str(target)

    def _setup_model(self) -> None:
        from .modeling.model import HyperscaleConfig, HyperscaleModel

        m = self.cfg.model
        backbone = self._resolve_backbone()
        if self.cfg.deepspeed.build_sharded:
            # HF's from_pretrained sees this config and loads the backbone straight into ZeRO-3 shards,
            # so an 11B model never materialises whole on one rank (the hook keeps a reference to it)
            from transformers.integrations import HfDeepSpeedConfig

            hf_ds_config = HfDeepSpeedConfig(self.ds_config)  # noqa: F841 (must stay alive while loading)
        # the run config's model section names the architecture fields of HyperscaleConfig one to one
        arch = {f.name: getattr(m, f.name) for f in dataclasses.fields(HyperscaleConfig) if hasattr(m, f.name)}
        self.model = HyperscaleModel.from_backbone(backbone, self.tasks, **arch)
        if self.cfg.deepspeed.build_sharded:
            # drop HF's global ZeRO-3 switch: later loads (the export on rank 0) must build whole models
            del hf_ds_config
        if m.dropout is not None:
            self.model.backbone.config.dropout_rate = m.dropout
            for mod in self.model.backbone.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.p = m.dropout
        if m.gradient_checkpointing:
            self.model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        report = self.model.parameter_report()
        log0(f"model: {m.method} on {backbone}: {report['trainable']:,} trainable of {report['backbone']:,} "
             f"backbone parameters ({report['percent_per_task']:.3f} % per task)")

    def _setup_engine(self) -> None:
        import deepspeed

        cfg = self.cfg
        if cfg.train.precision == "fp16":
            warnings.warn("fp16 with T5 overflows easily (inf activations); bf16 is the supported precision")
        if not cfg.deepspeed.build_sharded:
            self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, model_parameters=params, config=self.ds_config)
        self.accum = self.ds_config["gradient_accumulation_steps"]
        _exclude_frozen_aliases(self.engine)
        if cfg.deepspeed.zero_stage == 3 and self.model.bank is not None:
            self._persist_bank()
        self.state.config_fingerprint = cfg.model_fingerprint()
        self.state.backbone_hash = self.model.config.backbone_hash

    def _persist_bank(self) -> None:
        """ZeRO-3 shards the frozen backbone; the hypernetwork and task embeddings run at every layer, so
        keep them whole on every rank (DeepSpeed re-gathers persistent parameters after each step)."""
        opt = self.engine.optimizer
        persistent = getattr(opt, "persistent_parameters", None)
        if persistent is None:
            return
        known = {id(p) for p in persistent}
        for p in self.model.bank.parameters():
            if hasattr(p, "ds_persist") and id(p) not in known:
                p.ds_persist = True
                persistent.append(p)
        if persistent:
            persistent[0].all_gather(persistent)

    def _setup_preemption(self) -> None:
        try:
            from .training.preemption import PreemptionHandler
        except ImportError:  # pragma: no cover
            return
        self.preempt = PreemptionHandler()
        self.preempt.install()

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    # ================================================================== train
    def train(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.state.step >= t.max_steps:
            log0(f"already at step {self.state.step} >= train.max_steps={t.max_steps}; nothing to train")
        bar = self._progress_bar()
        # DeepSpeed records the global gradient norm only through its own optimizer wrappers (ZeRO, bf16,
        # fp16); with a bare fp32 optimizer (ZeRO-0, fp32) the trainer measures it itself
        e = self.engine
        own_grad_norm = not (e.zero_optimization() or e.bfloat16_enabled() or e.fp16_enabled())
        window = {"loss_sum": torch.zeros(len(self.tasks)), "count": torch.zeros(len(self.tasks)), "tokens": 0.0,
                  "time": 0.0, "steps": 0}
        while self.state.step < t.max_steps:
            if self.preempt is not None and self.preempt.should_stop():
                self._preempted()
            # ---- sample, forward, backward, step
            t0 = time.perf_counter()
            examples = self.sampler.next_rank_batch(self.rank, self.world)
            if cfg.distributed.check_task_sync:
                self._check_task_sync(examples)
            stats = torch.zeros(3, len(self.tasks))  # per task: loss sum, example count, tokens
            mb = t.micro_batch_size
            for i in range(0, len(examples), mb):
                batch = self._collate(examples[i:i + mb])
                loss, per_example = self._loss(batch)
                self.engine.backward(loss)
                if own_grad_norm and self.engine.is_gradient_accumulation_boundary():
                    self._grad_norm = self._trainable_grad_norm()
                self.engine.step()
                stats[0].index_add_(0, batch["task_ids"], per_example.detach().float().cpu())
                stats[1].index_add_(0, batch["task_ids"], torch.ones(len(per_example)))
                stats[2].index_add_(0, batch["task_ids"], (batch["attention_mask"].sum(1) + (batch["labels"] != -100).sum(1)).float())
            if dist.is_initialized() and self.world > 1:
                dist.all_reduce(stats)
            self.state.step += 1
            self.state.samples_seen += int(stats[1].sum())
            self.state.tokens_seen += int(stats[2].sum())
            self.state.sampler = self.sampler.state_dict()
            dt = time.perf_counter() - t0
            loss_value = float(stats[0].sum() / stats[1].sum())
            # ---- log
            window["loss_sum"] += stats[0]
            window["count"] += stats[1]
            window["tokens"] += float(stats[2].sum())
            window["time"] += dt
            window["steps"] += 1
            lr = self.engine.get_lr()[0]
            self.logger.record({"step": self.state.step, "loss": loss_value, "lr": lr,
                                "tasks": {self.tasks[i]: int(c) for i, c in enumerate(stats[1].tolist()) if c}})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", samples_s=f"{stats[1].sum() / dt:.1f}")
            if self.state.step % cfg.logging.every_steps == 0 or self.state.step == t.max_steps:
                self._log_window(window, lr)
                window = {k: (v.zero_() if isinstance(v, torch.Tensor) else 0.0) for k, v in window.items()}
            # ---- eval
            final = self.state.step == t.max_steps
            is_best = False
            if (cfg.eval.every_steps and self.state.step % cfg.eval.every_steps == 0) or final:
                is_best = self._eval_and_track(final)
            # ---- save
            if (cfg.checkpoint.every_steps and self.state.step % cfg.checkpoint.every_steps == 0) or final or is_best:
                self.save(is_best=is_best)
        if bar is not None:
            bar.close()
        return self.results if hasattr(self, "results") else {}

    def _progress_bar(self) -> Any:
        if self.rank != 0 or not self.cfg.logging.progress_bar:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.train.max_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                    file=sys.stderr)

    def _collate(self, examples: list) -> dict:
        feats = []
        for task, idx in examples:
            cols = self.train_columns[task]
            feats.append({"input_ids": cols["input_ids"][int(idx)], "labels": cols["labels"][int(idx)], "task": task})
        batch = self.collate(feats)
        return {k: v.to(self.device) if k != "task_ids" else v for k, v in batch.items()}

    def _loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over examples of each example's mean token loss: the same objective for any world size,
        micro-batch size or padding."""
        labels = batch["labels"]
        out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          decoder_input_ids=self.model.backbone._shift_right(labels),
                          task_ids=batch["task_ids"] if self.model.bank is not None else None)
        logits = out.logits.float()
        tok = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100,
                              reduction="none").view(labels.shape)
        n_tok = (labels != -100).sum(1).clamp(min=1)
        per_example = tok.sum(1) / n_tok
        return per_example.mean(), per_example

    @torch.no_grad()
    def _trainable_grad_norm(self) -> float:
        """L2 norm of the (already all-reduced) gradients before clipping, as DeepSpeed's clipping sees them."""
        norms = [p.grad.detach().float().norm() for p in self.engine.module.parameters()
                 if p.requires_grad and p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def _check_task_sync(self, examples: list) -> None:
        """Debug check (``distributed.check_task_sync``): the slices the ranks are about to train on,
        put together in rank order, must be exactly the global batch of this step that every rank
        derives from (seed, step). Fails loudly, naming the ranks that disagree."""
        step = self.state.step
        expected = [(str(t), int(i)) for t, i in self.sampler.global_batch(step)]
        mine = [(str(t), int(i)) for t, i in examples]
        slices: list[Any] = [None] * self.world
        dist.all_gather_object(slices, mine)
        per_rank = len(expected) // self.world
        bad = [r for r, got in enumerate(slices) if got != expected[r * per_rank:(r + 1) * per_rank]]
        if bad:
            tasks = {r: sorted({t for t, _ in slices[r]}) for r in bad}
            raise RuntimeError(
                f"task sync check failed at step {step} on rank {self.rank}: ranks {bad} train on examples that "
                f"are not their slice of the global batch (their tasks: {tasks}); different seeds, data or "
                "sampler state across ranks?")

    def _log_window(self, w: dict, lr: float) -> None:
        step = self.state.step
        count = w["count"].sum().clamp(min=1)
        scalars = {"train/loss": float(w["loss_sum"].sum() / count), "train/lr": lr,
                   "train/samples_per_s": float(count) / max(w["time"], 1e-9),
                   "train/tokens_per_s": w["tokens"] / max(w["time"], 1e-9),
                   "train/skipped_steps": float(getattr(self.engine, "skipped_steps", 0))}
        gn = self.engine.get_global_grad_norm()
        if gn is None:
            gn = getattr(self, "_grad_norm", None)
        if gn is not None:
            scalars["train/grad_norm"] = float(gn)
        for i, task in enumerate(self.tasks):
            scalars[f"train/task_count/{task}"] = float(w["count"][i])
            if w["count"][i] > 0:
                scalars[f"train/loss/{task}"] = float(w["loss_sum"][i] / w["count"][i])
        self.logger.scalars(step, scalars)
        self.logger.flush()

    # ================================================================== eval
    def _eval_and_track(self, final: bool) -> bool:
        splits = [s for s in self.cfg.eval.splits if final or s == "validation"]
        results = {s: self.evaluate(s) for s in splits}
        if not hasattr(self, "results"):
            self.results = {}
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
        from .data.metrics import average_metrics, compute_task_metrics
        from .data.tasks import get_task
        from .training.evaluate import predict_task

        e = self.cfg.eval
        module = self.engine.module
        was_training = module.training
        module.eval()
        per_task = {}
        t0 = time.perf_counter()
        for task in self.tasks:
            ds = self.data[task][split]
            n = len(ds) if e.max_examples is None else min(len(ds), e.max_examples)
            rows = ds.select(range(n))
            spec = get_task(task)
            labels = None if spec.is_regression else list(spec.label_strings())
            preds = predict_task(module, self.tokenizer, task, rows["source"], mode=e.mode, label_strings=labels,
                                 max_target_tokens=spec.max_target_length + 1, batch_size=e.batch_size,
                                 device=self.device, max_source_length=self.cfg.data.max_source_length,
                                 synced_gpus=self.cfg.deepspeed.zero_stage == 3 and self.world > 1)
            per_task[task] = compute_task_metrics(task, preds, rows["target"])
        if was_training:
            module.train()
        result = {"step": self.state.step, "split": split, "tasks": per_task, "average": average_metrics(per_task),
                  "seconds": time.perf_counter() - t0}
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
        files = {"hyperscale_config.json": json.dumps(self.model.config.to_dict(), indent=2, sort_keys=True) + "\n",
                 "run_config.yaml": self.cfg.to_yaml()}
        tok_dir = self.output_dir / "tokenizer"
        if self.rank == 0 and not tok_dir.exists():
            self.tokenizer.save_pretrained(str(tok_dir))
        files["tokenizer"] = tok_dir
        tag = ckpt.save(self.engine, self.ckpt_root, self.state, files, self.cfg.checkpoint.keep_last, is_best)
        self.last_tag = tag
        log0(f"saved checkpoint {self.ckpt_root / tag}")
        return tag

    def load(self, ckpt_dir: Path) -> None:
        saved = ckpt.read_trainer_state(ckpt_dir)
        if saved is not None:  # check before DeepSpeed loads (it fails on mismatched shapes, unclearly)
            self._check_fingerprint(ckpt_dir, saved.config_fingerprint)
            self._check_backbone(ckpt_dir, saved.backbone_hash)
        state = ckpt.load(self.engine, ckpt_dir)
        self._check_fingerprint(ckpt_dir, state.config_fingerprint)
        self._check_backbone(ckpt_dir, state.backbone_hash)
        self.state = state
        self.sampler.load_state_dict(state.sampler)
        log0(f"resumed from {ckpt_dir} at step {state.step}")

    def _check_backbone(self, ckpt_dir: Path, saved_hash: Optional[str]) -> None:
        if saved_hash and self.model.config.backbone_hash and saved_hash != self.model.config.backbone_hash:
            raise ConfigError(f"cannot resume from {ckpt_dir}: the backbone's weights differ from the ones it was "
                              "trained on (hash mismatch); load the original backbone")

    def _preempted(self) -> None:
        log0(f"preemption signal: saving at step {self.state.step}")
        self.save()
        self.preempt.requeue()
        self.logger.close()
        self._barrier()
        sys.exit(0)

    # ================================================================== finish
    def finish(self) -> dict:
        """Export the last checkpoint to standalone weights and print the result table (rank 0)."""
        summary = {"checkpoint": str(self.ckpt_root / getattr(self, "last_tag", "")),
                   "tensorboard": str(self.output_dir / "tensorboard")}
        if self.rank == 0:
            from .training.export import export_checkpoint

            export_dir = self.output_dir / "export"
            if (export_dir / "hyperscale_config.json").exists():
                export_dir = self.output_dir / f"export-step-{self.state.step:08d}"
            if not (export_dir / "hyperscale_config.json").exists():
                export_checkpoint(self.ckpt_root / self.last_tag, export_dir)
            summary["export"] = str(export_dir)
            results = getattr(self, "results", {})
            out = self.output_dir / "results.json"
            if out.exists():  # a resumed run finishing again: keep the earlier summary under its step
                try:
                    earlier = max(int(r["step"]) for r in json.loads(out.read_text()).values())
                except (ValueError, KeyError, TypeError, AttributeError):
                    earlier = "unknown"
                keep = self.output_dir / f"results.step-{earlier}.json"
                if not keep.exists():
                    os.replace(out, keep)
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(format_results(results), flush=True)
            for k, v in summary.items():
                print(f"{k:>12}: {v}", flush=True)
        self._barrier()
        self.logger.close()
        return summary


def format_results(results: dict) -> str:
    if not results:
        return "(no evaluation results)"
    lines = []
    for split, res in results.items():
        lines.append(f"\n{split} (step {res['step']}):")
        lines.append(f"  {'task':<10} metrics")
        for task, metrics in res["tasks"].items():
            lines.append(f"  {task:<10} " + "  ".join(f"{k} {v:6.2f}" for k, v in metrics.items()))
        avg = res["average"]
        lines.append(f"  {'average':<10} " + "  ".join(f"{k} {v:6.2f}" for k, v in avg.items()))
    return "\n".join(lines)


def build_arg_parser(prog: str = "python -m hyperscale.train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a hyperscale model (HyperFormer++ and baselines).")
    p.add_argument("config", nargs="?", default=None,
                   help="run config YAML (default: the embedded tiny CPU run, configs/default.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=100")
    p.add_argument("--resume", default=None, help="'auto' (continue from the run's latest checkpoint) or a path")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> dict:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    cfg = load_config(config, overrides)
    recipe = Recipe(cfg, resume=args.resume)
    recipe.setup()
    recipe.train()
    return recipe.finish()


def main(argv: Optional[list[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, FileExistsError, FileNotFoundError) as e:
        print(f"hyperscale: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
