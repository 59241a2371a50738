"""hyperscale's errors, and the one handler every entry point uses.

Every error a user can fix (a bad config key or value, a missing data file, an incompatible checkpoint, a run
directory that already holds a run) is a :class:`HyperscaleError`; its message names the thing and how to fix
it. :func:`run_main` turns one into a single ``hyperscale: error: ...`` line on stderr and exit status 2,
printed once even when several ranks fail alike (rank 0 prints); anything else is a bug or an environment
failure and keeps its traceback (exit status 1). The subclasses also derive from the built-in type callers
of the Python API would catch (``ValueError``, ``FileExistsError``, ``FileNotFoundError``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Mapping, NoReturn, Optional


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
    """Run an entry point's body: its exit status, or 2 after a one-line report of a :class:`HyperscaleError`."""
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
