"""hyperscale's errors, and the one handler every entry point uses.

Every error a user can fix (a bad config key or value, a missing data file, an incompatible checkpoint, a run
directory that already holds a run) is a :class:`HyperscaleError`; its message names the thing and how to fix
it. :func:`run_main` turns one into a single ``hyperscale: error: ...`` line on stderr and exit status 2,
printed once even when several ranks fail alike (rank 0 prints); anything else is a bug or an environment
failure and keeps its traceback (exit status 1). The subclasses also derive from the built-in type callers
of the Python API would catch (``ValueError``, ``FileExistsError``, ``FileNotFoundError``).

The package logs through one ``logging`` hierarchy (``logging.getLogger("hyperscale...")``). :func:`run_main` shows
it on the console for the block it runs (:func:`console_logging`): ``[hyperscale] ...`` lines from rank 0, every
rank's with its rank at DEBUG (``--verbose``, ``logging.verbose``, ``HYPERSCALE_DEBUG=1``), written above progress
bars. Nothing is installed at import or left behind: called from Python, the records go to the caller's logging.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Callable, Iterator, Mapping, NoReturn, Optional


class HyperscaleError(Exception):
    """Bad input or state that the user can fix; the message says what and how."""


class ConfigError(HyperscaleError, ValueError):
    """A run configuration, command-line argument or model setting is invalid."""


class DataError(HyperscaleError, ValueError):
    """Bad or missing input data (file, row, label, split, task name)."""


class CheckpointError(HyperscaleError, ValueError):
    """A checkpoint or export cannot be used (missing, incomplete, incompatible, corrupt)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No (complete) checkpoint or export where one was asked for."""


class RunExistsError(HyperscaleError, FileExistsError):
    """An output directory or file already holds results that would be overwritten."""


class TrainingDivergedError(HyperscaleError):
    """The loss became NaN or infinite, or DeepSpeed skipped every step (overflowing gradients)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are :class:`ConfigError`: under :func:`run_main` one ``hyperscale: error:``
    line naming the subcommand's ``--help`` (exit 2), instead of argparse's usage block. Its subparsers are of
    this class too (``add_subparsers`` makes parsers of its parser's type); ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def current_rank(env: Optional[Mapping[str, str]] = None) -> int:
    """This process's rank: the process group's where one exists, else what the launcher set (``RANK``, or
    ``SLURM_PROCID`` under srun) in ``env`` (default ``os.environ``), else 0. The package's one rank helper; it
    imports nothing that is not loaded already (``hyperscale.launch`` stays light)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = os.environ if env is None else env
    for var in ("RANK", "SLURM_PROCID"):
        value = env.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def report(error: HyperscaleError) -> None:
    """The one-line report: ``hyperscale: error: ...`` on stderr, from rank 0 only."""
    if current_rank() == 0:
        print(f"hyperscale: error: {error}", file=sys.stderr, flush=True)


def run_main(fn: Callable[[], int | None]) -> int:
    """Run an entry point's body with the package's log on the console (:func:`console_logging`): its exit status,
    or 2 after a one-line report of a :class:`HyperscaleError`."""
    with console_logging():
        try:
            return int(fn() or 0)
        except HyperscaleError as e:
            report(e)
            _leave_process_group()
            return 2


def leave_process_group() -> None:
    """Tear this process's group down, and DeepSpeed's process-wide clone of the world group with it (the clone
    outlives its group: a later group in the same process, a second run from Python, would hand DeepSpeed the
    dead one, "Group ... is not registered"). After an error, before the interpreter exits: left to the exit
    handlers, a rank whose peer has already gone can abort in gloo's teardown ("terminate called without an
    active exception", exit -6) instead of exiting 2. Idempotent; imports nothing that is not loaded already."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        groups._WORLD_GROUP = None


def _leave_process_group() -> None:
    try:
        leave_process_group()
    except Exception:  # the report is out; nothing more to do for a failing rank
        pass


# ---------------------------------------------------------------------------------------------------- the console
LOGGER = "hyperscale"  # the package's logger: every module logs under it (logging.getLogger("hyperscale.<module>"))
DEBUG_ENV = "HYPERSCALE_DEBUG"  # =1: the entry points show DEBUG records, from every rank


def world_size_now() -> int:
    """The process group's size where one exists, else what the launcher set (``WORLD_SIZE``), else 1."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    value = os.environ.get("WORLD_SIZE", "")
    return int(value) if value.isdigit() else 1


def _every_rank() -> bool:
    """Every rank's records show when the package's logger is at DEBUG (``--verbose``, ``logging.verbose``,
    ``HYPERSCALE_DEBUG=1``); otherwise rank 0's only."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)


class RankFilter(logging.Filter):
    """Passes rank 0's records; another rank's only while the package's logger is at DEBUG. Sets ``record.rank``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = current_rank()
        return record.rank == 0 or _every_rank()


class ConsoleFormatter(logging.Formatter):
    """``[hyperscale] message``; ``[hyperscale rank N] message`` while every rank shows and there are several."""

    def format(self, record: logging.LogRecord) -> str:
        rank = getattr(record, "rank", current_rank())
        prefix = f"[hyperscale rank {rank}]" if _every_rank() and world_size_now() > 1 else "[hyperscale]"
        text = f"{prefix} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleHandler(logging.Handler):
    """Writes a record as one line: INFO and DEBUG on stdout, warnings, errors and records logged with
    ``extra={"stderr": True}`` (progress) on stderr; through ``tqdm.write`` where tqdm is loaded, so that lines
    stay above a progress bar instead of inside it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RankFilter())
        self.setFormatter(ConsoleFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stderr if record.levelno >= logging.WARNING or getattr(record, "stderr", False) else sys.stdout
            tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
            if tqdm is not None:
                tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
            stream.flush()
        except Exception:  # logging's contract: a failing handler reports, never raises
            self.handleError(record)


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """Within the block, the package's records show on the console (:class:`ConsoleHandler`, at INFO; DEBUG from
    every rank under ``HYPERSCALE_DEBUG=1``). The command-line entry points run in it (:func:`run_main`); the
    handler and the level are gone on exit, so a caller from Python keeps standard logging: the records propagate
    to its own configuration. Nested blocks add no second handler."""
    logger = logging.getLogger(LOGGER)
    if any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        yield
        return
    handler, level = ConsoleHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if os.environ.get(DEBUG_ENV) == "1" else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def debug_logging(on: bool = True) -> Iterator[None]:
    """Within the block (``on``), the package's logger at DEBUG: every rank's records show, with their rank. The
    level before comes back on exit."""
    logger = logging.getLogger(LOGGER)
    level = logger.level
    if on:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.setLevel(level)
