"""``python tests/preloaded.py SOCKET``: a process that imports what every launched run imports (torch, DeepSpeed,
transformers' T5, datasets, the trainer and the command line: 6-8 s per process on 2 CPU cores) once, then forks
a copy of itself for each process a test starts (helpers.launch with ``preloaded=True``, helpers.run_cases).

A forked process is what ``python -m MODULE ARGS`` or ``python SCRIPT ARGS`` would be, started in the request's
directory with the request's environment (for two ranks: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT,
as srun starts the ranks of a job), its stdout and stderr appended to the request's log. What is under test there
is what the run does, not the interpreter's start-up: a test of a launcher (torchrun, srun, sbatch, the README's
command lines) starts real processes.

Protocol (one request per connection, JSON lines): the client sends ``{"procs": [{"target": [...], "args": [...],
"env": {...}}], "cwd": DIR, "log": FILE}``; a supervisor forked for the request answers ``{"pgid": N}`` (the
process group of the request's processes: the client kills it on a timeout) and, when every process has ended,
``{"codes": [...]}``. When a process fails the others are stopped (SIGTERM, then SIGKILL after STOP_GRACE_S), as
torchrun stops a failed job's ranks. The server exits when its parent (the test session) is gone.

Before forking, this process has run no parallel torch operation, so a fork inherits no OpenMP team; a thread that
an import started (none on the machines this was measured on) is noted in the server's log, since a fork keeps only
the forking thread.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import traceback

STOP_GRACE_S = 10


def preload() -> None:
    import datasets  # noqa: F401
    import deepspeed  # noqa: F401
    import torch  # noqa: F401
    import transformers.models.mt5.modeling_mt5  # noqa: F401
    import transformers.models.t5.modeling_t5  # noqa: F401

    import hyperscale.cli  # noqa: F401  every subcommand
    import hyperscale.train  # noqa: F401
    import hyperscale.training.recipe  # noqa: F401
    if threading.active_count() > 1:  # a fork keeps only the forking thread: note it, for a hang's post-mortem
        print(f"preloaded.py: threads after preloading: {threading.enumerate()}", file=sys.stderr, flush=True)


def run_child(proc: dict, cwd: str, log: str) -> None:
    """In the forked process: become ``python TARGET ARGS`` and end with its exit status (never returns)."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ.clear()
        os.environ.update(proc["env"])
        os.chdir(cwd)
        import runpy

        target, args = proc["target"], proc["args"]
        try:
            if target[0] == "-m":
                sys.path[0] = cwd  # as `python -m` puts the working directory first
                sys.argv = [target[1], *args]
                runpy.run_module(target[1], run_name="__main__", alter_sys=True)
            else:
                script = os.path.abspath(target[0])
                sys.path[0] = os.path.dirname(script)  # as `python SCRIPT` puts the script's folder first
                sys.argv = [script, *args]
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - as the interpreter: the traceback, exit 1
            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()  # what the interpreter runs at exit (process groups, writers, locks)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def supervise(conn: socket.socket, request: dict) -> None:
    """In the supervisor (forked per request): fork the processes, report their process group and exit codes."""
    os.setpgid(0, 0)
    pids = []
    for proc in request["procs"]:
        pid = os.fork()
        if pid == 0:
            conn.close()
            run_child(proc, request["cwd"], request["log"])
        pids.append(pid)
    f = conn.makefile("w")
    f.write(json.dumps({"pgid": os.getpgid(0)}) + "\n")
    f.flush()
    codes: dict[int, int] = {}
    stop_at = None
    while len(codes) < len(pids):
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if stop_at is not None and time.monotonic() > stop_at:
                for p in pids:
                    if p not in codes:
                        os.kill(p, signal.SIGKILL)
                stop_at = None
            time.sleep(0.05)
            continue
        if pid in pids:
            codes[pid] = os.waitstatus_to_exitcode(status)
            if codes[pid] != 0 and stop_at is None and len(codes) < len(pids):
                for p in pids:  # one failed: stop the others (they may wait in a collective for it)
                    if p not in codes:
                        os.kill(p, signal.SIGTERM)
                stop_at = time.monotonic() + STOP_GRACE_S
    f.write(json.dumps({"codes": [codes[p] for p in pids]}) + "\n")
    f.flush()


def serve(path: str) -> None:
    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(1.0)
    print("ready", flush=True)
    while os.getppid() == parent:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # reap finished supervisors
                pass
        except ChildProcessError:
            pass
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        request = json.loads(conn.makefile("r").readline())
        pid = os.fork()
        if pid == 0:
            server.close()
            code = 0
            try:
                supervise(conn, request)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        conn.close()


if __name__ == "__main__":
    preload()
    serve(sys.argv[1])
