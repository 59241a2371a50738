"""What every part of the suite shares: the checkout's paths, the environment of a launched process, launching
(one process, several entry-point calls in one process, or torchrun), the environment saved and restored around
in-process work, and waiting for a condition by polling it (never a fixed sleep).

Importable as ``helpers`` from any test (tests/conftest.py puts this folder on ``sys.path``).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

from hyperscale.launch import find_free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
TINY = CONFIG_DIR / "tiny-cpu.yaml"
LAUNCH_TIMEOUT_S = 300
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
CASE_DRIVER = Path(__file__).resolve().parent / "case_driver.py"
PRELOADED = Path(__file__).resolve().parent / "preloaded.py"

__all__ = ["CONFIG_DIR", "RANK_VARS", "REPO", "TINY", "find_free_port", "launch", "log_tail", "rank_envs", "run_cases",
           "run_env", "saved_env", "wait_until"]

T = TypeVar("T")


def run_env() -> dict:
    """The environment of a launched run: CPU DeepSpeed, one thread per rank, offline, this checkout first."""
    env = dict(os.environ)
    venv_ext = REPO / ".venv" / "torch_ext"
    if "TORCH_EXTENSIONS_DIR" not in env and venv_ext.is_dir():
        env["TORCH_EXTENSIONS_DIR"] = str(venv_ext)  # DeepSpeed's compiled shm op (40 s to rebuild)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    for var in (*RANK_VARS, "TORCHELASTIC_RUN_ID"):
        env.pop(var, None)  # a plain process must pick its own single-process rendezvous
    for var in [v for v in env if v.startswith(("SLURM_", "PMI_", "OMPI_"))]:
        env.pop(var)  # not a task of some outer job
    return env


def rank_envs(nproc: int) -> list[dict]:
    """The environments of ``nproc`` ranks on this host, as srun starts a job's tasks: :func:`run_env` plus RANK,
    LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE and a free MASTER_PORT on 127.0.0.1."""
    base, port = run_env(), str(find_free_port())
    return [dict(base, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(nproc)]


def launch(target: list[str], args: list[str], nproc: int, log: Path, timeout: int = LAUNCH_TIMEOUT_S,
           cwd: Optional[Path] = None, preloaded: bool = False) -> subprocess.CompletedProcess:
    """Run ``target`` (``["-m", "hyperscale.train"]`` or ``[script]``) with ``args`` in ``cwd`` (default: the
    checkout): under ``torchrun --standalone`` for 2+ processes, as a plain ``python`` process for one. With
    ``preloaded``, the processes are forked from one that has imported torch, DeepSpeed and the trainer already
    (tests/preloaded.py: 6-8 s less per process), 2+ of them started as srun starts ranks; for tests of what a run
    does, where the launch itself is not under test."""
    if preloaded:
        return _launch_preloaded(target, [str(a) for a in args], nproc, log, timeout, cwd or REPO)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *(["--module", target[1]] if target[0] == "-m" else target), *args]
    else:
        cmd = [sys.executable, *target, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        # its own process group, so that a hung run is stopped with all its ranks
        proc = subprocess.Popen(cmd, cwd=cwd or REPO, env=run_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"timed out after {timeout} s: {' '.join(cmd)}\n{log_tail(log)}") from None
    return subprocess.CompletedProcess(cmd, rc)


class _Preloaded:
    """The session's tests/preloaded.py server: started at the first request, stopped when the session ends (and by
    itself when this process is gone)."""

    def __init__(self) -> None:
        import threading

        self.proc: Optional[subprocess.Popen] = None
        self.dir: Optional[str] = None
        self.lock = threading.Lock()  # tests may launch from several threads (test_errors): one server

    def socket_path(self) -> str:
        with self.lock:
            return self._start()

    def _start(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            import atexit
            import tempfile

            self.dir = tempfile.mkdtemp(prefix="hyperscale-preloaded-")
            path = os.path.join(self.dir, "socket")
            with open(os.path.join(self.dir, "server.log"), "w") as log:
                self.proc = subprocess.Popen([sys.executable, str(PRELOADED), path], cwd=REPO, env=run_env(),
                                             stdout=subprocess.PIPE, stderr=log, text=True)
            line = self.proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"tests/preloaded.py did not start:\n{Path(self.dir, 'server.log').read_text()}")
            atexit.register(self.stop)
        return os.path.join(self.dir, "socket")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_PRELOADED = _Preloaded()


def _launch_preloaded(target: list[str], args: list[str], nproc: int, log: Path, timeout: int,
                      cwd: Path) -> subprocess.CompletedProcess:
    import socket

    envs = [run_env()] if nproc == 1 else rank_envs(nproc)
    cmd = ["python", *target, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ [preloaded, {nproc} process(es)] " + " ".join(cmd) + "\n")
    request = {"procs": [{"target": target, "args": args, "env": env} for env in envs], "cwd": str(cwd),
               "log": str(log)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(_PRELOADED.socket_path())
        conn.sendall((json.dumps(request) + "\n").encode())
        conn.settimeout(60)
        reader = conn.makefile("r")
        pgid = json.loads(reader.readline())["pgid"]
        conn.settimeout(timeout)
        try:
            codes = json.loads(reader.readline())["codes"]
        except (socket.timeout, TimeoutError):
            os.killpg(pgid, signal.SIGKILL)
            raise RuntimeError(f"timed out after {timeout} s: {' '.join(cmd)}\n{log_tail(log)}") from None
    return subprocess.CompletedProcess(cmd, next((c for c in codes if c != 0), 0))


def run_cases(cases: dict[str, tuple[str, list[str]]], workdir: Path, timeout: int = LAUNCH_TIMEOUT_S,
              cwd: Optional[Path] = None) -> dict[str, tuple[int, str]]:
    """Several entry-point calls in one plain process in ``cwd`` (default: the checkout), one after another:
    ``{name: (module, argv)}`` runs ``module.main(argv)`` (``hyperscale.train`` for ``python -m hyperscale.train``,
    ``hyperscale.cli`` for ``hyperscale``) with its own stdout (kept in ``workdir/NAME.out``) and stderr (in
    ``workdir/NAME.log``); returns ``{name: (exit status, stdout then stderr)}``. One process
    start-up (torch, DeepSpeed, transformers: 6-10 s) instead of one per case, where what is under test is what
    the call says and does, not the launch; a case also proves the one before it left no process-wide state."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec, result, log = workdir / "cases.json", workdir / "cases.rc.json", workdir / "cases.log"
    spec.write_text(json.dumps({name: [module, [str(a) for a in argv], str(workdir / f"{name}.out"),
                                       str(workdir / f"{name}.log")] for name, (module, argv) in cases.items()}))
    proc = launch([str(CASE_DRIVER)], [str(spec), str(result)], 1, log, timeout=timeout, cwd=cwd, preloaded=True)
    if proc.returncode != 0 or not result.is_file():
        last = [workdir / f"{name}.log" for name in cases if (workdir / f"{name}.log").is_file()][-1:]
        raise RuntimeError(f"the case driver failed (exit {proc.returncode}):\n{log_tail(log)}"
                           + "".join(f"\n--- {p.name}:\n{log_tail(p)}" for p in last))
    codes = json.loads(result.read_text())
    return {name: (codes[name], (workdir / f"{name}.out").read_text() + (workdir / f"{name}.log").read_text())
            for name in cases}


def log_tail(log: Path, n: int = 60) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "it/s]" not in ln and "examples/s]" not in ln]
    return "\n".join(lines[-n:])


@contextlib.contextmanager
def saved_env(*names: str) -> Iterator[None]:
    """Environment variables ``names`` (default: the rank variables) as they were before the block, after it."""
    names = names or RANK_VARS
    saved = {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_until(condition: Callable[[], Optional[T]], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` seconds pass (an
    AssertionError naming ``what``): waiting as long as needed and no longer, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
