"""Run logging on rank 0 (TensorBoard scalars/text and a JSON-lines step log), and what third-party code may
print: :func:`quiet_known_noise` (known-harmless warnings) and :func:`third_party_quiet` (progress bars and
banners off unless ``logging.verbose``), both scoped to a block."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch

from ..errors import debug_logging

T = TypeVar("T")

class RunLogger:
    """Writes ``RUN/tensorboard`` and ``RUN/train_log.jsonl``; a no-op on ranks other than 0.

    On resume from step ``k`` the TensorBoard writer purges events after ``k`` and the JSON log
    drops lines after ``k`` (the run will write them again), so curves never double up.
    """

    def __init__(self, output_dir: Path, rank: int, tensorboard: bool = True, resume_step: Optional[int] = None):
        self.enabled = rank == 0
        self.tb = None
        self.jsonl: Optional[Path] = None
        if not self.enabled:
            return
        self.jsonl = output_dir / "train_log.jsonl"
        if resume_step is not None and self.jsonl.exists():
            kept = [ln for ln in self.jsonl.read_text().splitlines() if ln.strip()
                    and json.loads(ln).get("step", 0) <= resume_step]
            self.jsonl.write_text("".join(ln + "\n" for ln in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            kwargs = {"purge_step": resume_step + 1} if resume_step is not None else {}
            self.tb = SummaryWriter(str(output_dir / "tensorboard"), **kwargs)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def record(self, entry: dict[str, Any]) -> None:
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


@contextlib.contextmanager
def quiet_known_noise() -> Iterator[None]:
    """Within the block, silence third-party messages known to be harmless, narrowly (by message and source);
    everything else still shows. Enter before DeepSpeed is imported. Every change is undone on exit (the
    warning filters, the logger filter, the environment), so a caller from Python keeps its own settings."""
    set_env = False
    # DeepSpeed announces "Setting accelerator to CPU" on its import when no GPU is visible; naming the
    # accelerator is the documented way to say that CPU is meant (read once, when DeepSpeed picks its accelerator)
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
        set_env = True
    # WarmupLR's constructor reads its own learning rate before the first step (upstream:
    # deepspeed/runtime/lr_schedules.py, WarmupLR.__init__ -> get_lr)
    lr_notice = _DropMessages("Attempting to get learning rate from scheduler before it has started")
    ds_logger = logging.getLogger("DeepSpeed")
    ds_logger.addFilter(lr_notice)
    try:
        with warnings.catch_warnings():
            # DeepSpeed 0.19's ZeRO-2/3 call torch.distributed's deprecated reduce_scatter_tensor /
            # all_gather_into_tensor: a FutureWarning on every step (upstream: deepspeed/comm/torch.py)
            warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(reduce_scatter_tensor|"
                                    r"all_gather_into_tensor)` is deprecated", category=FutureWarning)
            yield
    finally:
        ds_logger.removeFilter(lr_notice)
        if set_env:
            os.environ.pop("DS_ACCELERATOR", None)


# ---------------------------------------------------------------------------------------------- quiet by default
# True inside third_party_quiet(verbose=True) (``--verbose`` / ``logging.verbose=true``): hidden_output shows all
_VERBOSE: contextvars.ContextVar[bool] = contextvars.ContextVar("hyperscale_verbose", default=False)


@contextlib.contextmanager
def hidden_output() -> Iterator[None]:
    """Hide what third-party code prints to stdout/stderr within the block (DeepSpeed's ``print`` banners: "...
    built successfully", zero_to_fp32's "Processing zero checkpoint" block), unless verbose. If the block raises,
    what it printed is written to stderr before the error goes on, so nothing that explains a failure is lost."""
    if _VERBOSE.get():
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


@contextlib.contextmanager
def third_party_quiet(verbose: bool = False) -> Iterator[None]:
    """Within the block: the progress bars of datasets (tokenization) and transformers (loading and writing
    weights) off, and :func:`hidden_output` hiding DeepSpeed's banners; with ``verbose`` all of them on, and the
    package's logger at DEBUG (every rank's records, :func:`hyperscale.errors.debug_logging`). Hugging
    Face Hub downloads keep their progress bars either way (minutes for a large backbone). Blocks nest (a verbose
    run inside the quiet CLI shows everything); the previous settings come back on exit."""
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module (the package exports a class)
    token = _VERBOSE.set(bool(verbose))
    saved = (datasets_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    hub_bars = dict(hub_tqdm.progress_bar_states)

    def put(datasets_on: bool, transformers_on: bool) -> None:
        with warnings.catch_warnings():  # a HF_*_DISABLE_PROGRESS_BARS variable has priority: it says so
            warnings.simplefilter("ignore")
            (datasets_logging.enable_progress_bar if datasets_on else datasets_logging.disable_progress_bar)()
            (transformers_logging.enable_progress_bar if transformers_on
             else transformers_logging.disable_progress_bar)()
        hub_tqdm.progress_bar_states.clear()  # transformers switches the hub's too: put those back
        hub_tqdm.progress_bar_states.update(hub_bars)

    try:
        put(bool(verbose), bool(verbose))
        with debug_logging(bool(verbose)):
            yield
    finally:
        put(*saved)
        _VERBOSE.reset(token)


def quiet_unless_verbose(method: Callable[..., T]) -> Callable[..., T]:
    """Decorate a :class:`~hyperscale.training.recipe.Recipe` method: it runs in :func:`third_party_quiet`, verbose
    as its run config's ``logging.verbose`` says."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        with third_party_quiet(getattr(self.cfg.logging, "verbose", False)):
            return method(self, *args, **kwargs)

    return wrapper
