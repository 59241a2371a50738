"""Graceful stop on preemption: save at a step boundary on every rank, requeue, exit.

SLURM warns a job before its time limit (``#SBATCH --signal=USR1@120`` in
``slurm/train.sbatch``), ``scancel --signal=USR1 JOB`` does the same by hand, and a preempting
scheduler or ``scancel`` sends SIGTERM (followed by SIGKILL after the cluster's ``KillWait``).
The training loop uses the handler like this::

    handler = PreemptionHandler().install()
    for step in ...:
        ...optimizer step...
        if handler.should_stop():          # collective: every rank calls it every step
            save_checkpoint(...)           # all ranks, collectively
            handler.requeue()              # barrier, then rank 0: scontrol requeue $SLURM_JOB_ID
            sys.exit(0)

The signal handler only sets a flag, so a signal that arrives in the middle of a step, of a
collective, or of the checkpoint save changes nothing there; a second or third signal is
just counted.  :meth:`PreemptionHandler.should_stop` turns the local flags into one decision
(an all-reduce MAX over the ranks when ``torch.distributed`` is initialised), so all ranks
stop after the same step even if the signal reached them at different moments, or reached
only some of them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from types import FrameType
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ..errors import current_rank
from . import distributed as hdist

__all__ = ["PreemptionHandler", "DEFAULT_SIGNALS", "EXIT_STOPPED"]

logger = logging.getLogger(__name__)

#: SIGUSR1: SLURM's advance warning (``--signal=USR1@seconds``); SIGTERM: preemption/cancel.
DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM)

#: exit status of a run stopped by a signal after saving its checkpoint, outside SLURM: resume with --resume auto
EXIT_STOPPED = 3

SignalSpec = Union[int, str, signal.Signals]


def _to_signal(spec: SignalSpec) -> signal.Signals:
    if isinstance(spec, signal.Signals):
        return spec
    if isinstance(spec, int):
        return signal.Signals(spec)
    name = spec.strip().upper()
    if name.isdigit():
        return signal.Signals(int(name))
    if not name.startswith("SIG"):
        name = "SIG" + name
    return signal.Signals[name]


class PreemptionHandler:
    """Turn preemption signals into a stop at the next step boundary on all ranks.

    Args:
        signals: signals to catch (numbers, ``signal.Signals`` or names such as ``"USR1"``);
            default SIGUSR1 and SIGTERM.
        check_every: all-reduce the flag only every N-th :meth:`should_stop` call (the calls
            are counted identically on every rank, so they stay in step).  Default 1: every
            step.  Raise it when a step is so short that one tiny all-reduce per step shows up.
        env: environment to read ``SLURM_JOB_ID``/``RANK`` from (default ``os.environ``).
        run: runs a command and returns ``(returncode, output)``; injectable for tests.
    """

    def __init__(
        self,
        signals: Iterable[SignalSpec] = DEFAULT_SIGNALS,
        *,
        check_every: int = 1,
        env: Optional[Mapping[str, str]] = None,
        run: Optional[Callable[[Sequence[str]], tuple[int, str]]] = None,
    ) -> None:
        self.signals: tuple[signal.Signals, ...] = tuple(_to_signal(s) for s in signals)
        if check_every < 1:
            raise ValueError("check_every must be >= 1")
        self.check_every = check_every
        self._env = env
        self._run = run or _run_command
        self._flag = False          # set by the signal handler, read by should_stop
        self._signal_count = 0      # number of signals received
        self._last_signal: Optional[signal.Signals] = None
        self._stop = False          # latched global decision
        self._calls = 0
        self._previous: dict[signal.Signals, Any] = {}
        self._installed = False

    # ---------------------------------------------------------------- signal side
    def install(self) -> "PreemptionHandler":
        """Register the handlers (main thread only; idempotent). Returns ``self``.

        The previous handlers are remembered and put back by :meth:`uninstall`.
        """
        if self._installed:
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._installed = True
        logger.debug("preemption handler installed for %s",
                     ", ".join(s.name for s in self.signals))
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install`."""
        if not self._installed:
            return
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()
        self._installed = False

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only flag and count: no locks, no logging module, no I/O beyond one raw write, so
        # a signal that lands inside a checkpoint save or a collective is harmless.
        self._flag = True
        self._signal_count += 1
        try:
            self._last_signal = signal.Signals(signum)
            name = self._last_signal.name
        except ValueError:
            name = str(signum)
        try:
            os.write(2, (f"hyperscale: received {name} (#{self._signal_count}); "
                         "will checkpoint and stop at the next step boundary\n").encode())
        except OSError:
            pass

    @property
    def received(self) -> bool:
        """True once this process received one of the signals (local, no communication)."""
        return self._flag

    @property
    def signal_count(self) -> int:
        return self._signal_count

    @property
    def last_signal(self) -> Optional[signal.Signals]:
        return self._last_signal

    def trigger(self) -> None:
        """Set the local flag as if a signal had arrived (tests, or a wall-clock budget)."""
        self._flag = True

    # ---------------------------------------------------------------- collective side
    def should_stop(self) -> bool:
        """Collective: True on every rank if any rank received a signal.

        Call it on all ranks at the same point (after each optimizer step).  With
        ``torch.distributed`` initialised and more than one rank, the local flags are
        all-reduced with MAX (:func:`hyperscale.training.distributed.any_rank`, on the group's
        communication device); without it the local flag is returned.  Once True it stays True without communicating again.
        """
        if self._stop:
            return True
        self._calls += 1
        if (self._calls - 1) % self.check_every != 0:
            return False
        decided = hdist.any_rank(self._flag)  # one MAX all-reduce on the communication device
        if decided:
            self._stop = True
            sig = self._last_signal.name if self._last_signal else "a peer's signal"
            logger.warning("preemption: stopping at this step boundary (%s)", sig)
        return decided

    # ---------------------------------------------------------------- requeue
    def _env_map(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def _rank(self) -> int:
        return current_rank(self._env_map())

    def requeue(self) -> bool:
        """Requeue this SLURM job; call on all ranks after the checkpoint is saved.

        Waits at a barrier first (when ``torch.distributed`` is initialised) so no rank is
        still writing when SLURM starts tearing the job down; then rank 0 runs
        ``scontrol requeue $SLURM_JOB_ID`` if the job is still ``RUNNING``.  A job that SLURM
        is already ending (``COMPLETING`` after a user's ``scancel``, which also sends SIGTERM,
        or after the time limit) stops with its checkpoint but is not requeued, so a cancel
        stays a cancel; SLURM's advance warning (SIGUSR1) and signals sent with
        ``scancel --signal`` leave the job ``RUNNING`` and requeue it.
        SLURM then ends the current run (SIGTERM to the ranks, SIGKILL after ``KillWait``) and
        starts the job again with the same id; ``slurm/train.sbatch`` passes ``--resume auto``.  Under SLURM the handled signals are
        ignored from here on, so that SIGTERM cannot kill the exiting interpreter: call
        ``sys.exit(0)`` right after.  Outside SLURM it only logs how to resume.  Returns True
        on the rank that requeued successfully.
        """
        if hdist.world_size() > 1:
            try:
                hdist.barrier()
            except Exception as e:  # a dead peer must not stop rank 0 from requeueing
                logger.warning("preemption: barrier before requeue failed: %s", e)
        job_id = self._env_map().get("SLURM_JOB_ID") or self._env_map().get("SLURM_JOBID")
        if job_id:
            # SLURM answers the requeue with SIGTERM to every rank (SIGKILL after KillWait).
            # We are leaving anyway: ignore it, so that it cannot kill the interpreter while
            # it shuts down (Python restores default handlers then) and turn a clean exit
            # into "killed by signal 15".
            self._ignore_signals()
        if self._rank() != 0:
            return False
        if not job_id:
            logger.warning("preemption: checkpoint saved; not running under SLURM, so not "
                           "requeueing. Rerun the same command with --resume auto to continue.")
            return False
        if not shutil.which("scontrol") and self._run is _run_command:
            logger.error("preemption: scontrol not found; cannot requeue job %s. "
                         "Resubmit it with --resume auto.", job_id)
            return False
        state = self._job_state(job_id)
        if state and state != "RUNNING":
            # SLURM is already ending the job (COMPLETING after `scancel JOB`, the time limit,
            # or a cancelling preemption): requeueing would undo a user's cancel.
            logger.warning("preemption: checkpoint saved; job %s is %s (cancelled or ended by "
                           "SLURM), so it is not requeued. Resubmit with --resume auto to "
                           "continue.", job_id, state)
            return False
        cmd = ["scontrol", "requeue", job_id]
        rc, out = self._run(cmd)
        if rc == 0:
            logger.warning("preemption: checkpoint saved; requeued SLURM job %s", job_id)
            return True
        logger.error("preemption: `%s` failed (exit %d): %s. The checkpoint is saved; "
                     "resubmit with --resume auto.", " ".join(cmd), rc, out.strip())
        return False

    def exit_run(self, step: int, max_steps: int) -> None:
        """After the checkpoint of ``step`` is saved on every rank: :meth:`requeue`, then exit 0 under SLURM (the job
        goes on, requeued or cancelled on purpose) and :data:`EXIT_STOPPED` elsewhere, so that
        ``hyperscale train && next-step`` does not go on with an unfinished run."""
        self.requeue()
        hdist.barrier()
        under_slurm = bool(self._env_map().get("SLURM_JOB_ID"))
        if not under_slurm and self._rank() == 0:
            logger.info("stopped at step %d of %d by a signal; continue with --resume auto", step, max_steps)
        sys.exit(0 if under_slurm else EXIT_STOPPED)

    def _job_state(self, job_id: str) -> str:
        """SLURM's JobState for ``job_id`` (``RUNNING``, ``CANCELLED``...), "" if unknown."""
        rc, out = self._run(["scontrol", "show", "job", "-o", job_id])
        if rc != 0:
            return ""
        m = re.search(r"\bJobState=(\S+)", out)
        return m.group(1) if m else ""

    def _ignore_signals(self) -> None:
        if not self._installed:  # never took the signals over: leave them alone
            return
        try:
            for sig in self.signals:
                signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass

    def __repr__(self) -> str:
        return (f"PreemptionHandler(signals={[s.name for s in self.signals]}, "
                f"received={self._flag}, count={self._signal_count}, stop={self._stop})")


def _run_command(cmd: Sequence[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return 127, str(e)
    return p.returncode, (p.stdout or "") + (p.stderr or "")
