"""Derive the torch.distributed rendezvous variables for every way hyperscale is launched.

The trainer calls :func:`setup_distributed_env` before anything touches ``torch.distributed``
or DeepSpeed.  It recognises, in this order:

1. ``torchrun`` (``TORCHELASTIC_RUN_ID`` + ``RANK``/``WORLD_SIZE``...)           -> ``"torchrun"``
2. the ``deepspeed`` launcher (``RANK``/``WORLD_SIZE`` + ``LOCAL_SIZE``/``CROSS_RANK``) -> ``"deepspeed"``
3. any other launcher that already set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
   ``MASTER_PORT`` (``LOCAL_RANK`` optional)                                  -> ``"env"``
4. a task started by ``srun`` (``SLURM_PROCID`` inside a job step)              -> ``"slurm"``
5. nothing: one process, rank 0 of 1, ``127.0.0.1``, a free port               -> ``"single"``

Under SLURM the master address is the first node of the step's node list, resolved to an
address with ``scontrol show hostnames`` and ``scontrol show node NAME`` (``NodeAddr``),
because node names need not be host names.  ``slurm/train.sbatch`` resolves them once per
job and exports them with ``HYPERSCALE_RENDEZVOUS_JOB=$SLURM_JOB_ID`` (so a thousand ranks do
not each ask slurmctld); a ``MASTER_ADDR``/``MASTER_PORT`` without that marker was inherited
from the submitting shell and is ignored.  ``HYPERSCALE_MASTER_ADDR``/``HYPERSCALE_MASTER_PORT``
override on purpose.  The port is derived from the job id (:func:`port_from_job_id`), so every
rank of a job agrees on it without talking.

The derivation itself (:func:`derive_dist_env`) is a pure function of an environment mapping
and injectable resolvers; :func:`setup_distributed_env` applies its result to ``os.environ``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, MutableMapping, Optional

__all__ = [
    "DistEnv",
    "derive_dist_env",
    "setup_distributed_env",
    "port_from_job_id",
    "find_free_port",
    "slurm_first_node_address",
    "expand_tasks_per_node",
    "PORT_BASE",
    "PORT_SPAN",
]

logger = logging.getLogger(__name__)

#: Ports derived from a SLURM job id lie in ``[PORT_BASE, PORT_BASE + PORT_SPAN)``: above the
#: well-known and SLURM daemon ports (6817/6818), below Linux's ephemeral range (32768+), so
#: the OS never hands the port to some other socket's outgoing connection.
PORT_BASE = 20000
PORT_SPAN = 10000

#: A resolver maps a SLURM node list expression (``"gpu[01-04]"``) to the address of its
#: first node.
Resolver = Callable[[str], str]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    ``launcher`` is one of ``"torchrun"``, ``"deepspeed"``, ``"env"``, ``"slurm"``,
    ``"single"``.  ``local_world_size`` is the number of ranks on this node (best effort; 1
    for a single process).
    """

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_env(self) -> dict[str, str]:
        """The variables ``torch.distributed``'s ``env://`` rendezvous and DeepSpeed read."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


# --------------------------------------------------------------------------------------------
# helpers


def port_from_job_id(job_id: str | int, base: int = PORT_BASE, span: int = PORT_SPAN) -> int:
    """A rendezvous port every rank of SLURM job ``job_id`` computes identically.

    ``base + job_id % span``.  Two concurrent jobs collide only when their ids differ by a
    multiple of ``span`` (10000 by default) *and* they share the first node.  Array jobs have
    one ``SLURM_JOB_ID`` per array task, so they differ too.
    """
    text = str(job_id).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"SLURM job id {job_id!r} is not a non-negative integer")
    return base + int(text) % span


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for single-process runs only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], timeout: float = 30.0) -> str:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return out.stdout


def slurm_first_node_address(nodelist: str, run: Callable[[list[str]], str] = _run) -> str:
    """Address of the first node of a SLURM node list, e.g. ``"gpu[03-04],cpu7"``.

    ``scontrol show hostnames`` expands the list; ``scontrol show node NAME`` gives the
    node's ``NodeAddr`` (what slurmctld itself uses to reach it), falling back to
    ``NodeHostname`` and then to resolving the name with DNS.  ``run`` is injectable for tests.
    """
    names = [n for n in run(["scontrol", "show", "hostnames", nodelist]).split() if n]
    if not names:
        raise RuntimeError(f"scontrol show hostnames {nodelist!r} returned no node")
    first = names[0]
    try:
        info = run(["scontrol", "show", "node", first])
    except (OSError, subprocess.SubprocessError) as e:
        logger.warning("scontrol show node %s failed (%s); resolving the name instead", first, e)
        info = ""
    fields = dict(re.findall(r"(\w+)=(\S*)", info))
    for key in ("NodeAddr", "NodeHostName", "NodeHostname"):
        value = fields.get(key, "")
        if value and value != "(null)":
            return value
    try:
        return socket.gethostbyname(first)
    except OSError:
        return first


def expand_tasks_per_node(spec: str) -> list[int]:
    """Expand SLURM's compressed tasks-per-node string: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not m:
            raise ValueError(f"cannot parse SLURM tasks-per-node {spec!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def _int(env: Mapping[str, str], key: str) -> int:
    value = env.get(key, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {key}={value!r} is not an integer") from None


def _is_srun_task(env: Mapping[str, str]) -> bool:
    """A task of a job step, as opposed to the batch shell or an ``salloc`` shell.

    The batch shell of an ``sbatch -N 2`` job also has ``SLURM_PROCID=0`` and
    ``SLURM_NTASKS=2``; treating it as rank 0 of 2 would hang, so a step id is required.
    """
    if "SLURM_PROCID" not in env:
        return False
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    # Special steps (batch, extern, interactive) have ids near 2**32 or a name.
    return bool(re.fullmatch(r"[0-9]+", step)) and int(step) < 0xFFFFFFF0


def _check(rank: int, local_rank: int, world_size: int, source: str) -> None:
    if world_size < 1:
        raise ValueError(f"{source}: world size {world_size} < 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"{source}: rank {rank} outside [0, {world_size})")
    if local_rank < 0:
        raise ValueError(f"{source}: local rank {local_rank} < 0")


# --------------------------------------------------------------------------------------------
# pure derivation


def derive_dist_env(
    env: Mapping[str, str],
    resolve_master: Optional[Resolver] = None,
    free_port: Callable[[], int] = find_free_port,
) -> DistEnv:
    """Work out rank, world size and rendezvous point from ``env``; change nothing.

    ``resolve_master`` turns a SLURM node list into the first node's address (default:
    :func:`slurm_first_node_address`, which calls ``scontrol``); it is only called under
    SLURM when ``MASTER_ADDR`` is not already set.  ``free_port`` is only called for a
    single process without ``MASTER_PORT``.
    """
    has_rank_vars = all(k in env for k in ("RANK", "WORLD_SIZE"))

    # 1./2./3. a launcher already did the work: trust it.
    if has_rank_vars and ("TORCHELASTIC_RUN_ID" in env or "GROUP_RANK" in env):
        launcher = "torchrun"
    elif has_rank_vars and ("LOCAL_SIZE" in env or "CROSS_RANK" in env):
        launcher = "deepspeed"
    elif has_rank_vars and "MASTER_ADDR" in env and "MASTER_PORT" in env:
        launcher = "env"
    else:
        launcher = ""
    if launcher:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        local_world = env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or ""
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            raise ValueError(
                f"{launcher} launcher set RANK/WORLD_SIZE but not MASTER_ADDR/MASTER_PORT")
        _check(rank, local_rank, world, launcher)
        return DistEnv(
            rank=rank,
            local_rank=local_rank,
            world_size=world,
            master_addr=env["MASTER_ADDR"],
            master_port=_int(env, "MASTER_PORT"),
            launcher=launcher,
            local_world_size=int(local_world) if local_world.isdigit() else 1,
        )

    # 4. srun started this process as one task of a step: one task = one rank.
    if _is_srun_task(env):
        rank = _int(env, "SLURM_PROCID")
        local_rank = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        world_key = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        if world_key not in env:
            raise ValueError("SLURM task without SLURM_STEP_NUM_TASKS or SLURM_NTASKS")
        world = _int(env, world_key)
        _check(rank, local_rank, world, "SLURM")

        local_world = 1
        per_node_spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        if per_node_spec:
            try:
                counts = expand_tasks_per_node(per_node_spec)
                node = int(env.get("SLURM_NODEID", "0"))
                local_world = counts[node] if node < len(counts) else counts[0]
            except (ValueError, IndexError):
                local_world = 1

        job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or ""
        # MASTER_ADDR/PORT count only when slurm/train.sbatch set them for this job; values
        # inherited from the submitting shell may be stale.  HYPERSCALE_MASTER_* always win.
        trusted = bool(job_id) and env.get("HYPERSCALE_RENDEZVOUS_JOB") == job_id
        addr = env.get("HYPERSCALE_MASTER_ADDR") or (env.get("MASTER_ADDR") if trusted else "")
        if not addr:
            nodelist = (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                        or env.get("SLURM_NODELIST"))
            if not nodelist:
                raise ValueError("SLURM task without SLURM_STEP_NODELIST/SLURM_JOB_NODELIST")
            addr = (resolve_master or slurm_first_node_address)(nodelist)
        if env.get("HYPERSCALE_MASTER_PORT"):
            port = _int(env, "HYPERSCALE_MASTER_PORT")
        elif trusted and env.get("MASTER_PORT"):
            port = _int(env, "MASTER_PORT")
        else:
            if not job_id:
                raise ValueError("SLURM task without SLURM_JOB_ID")
            port = port_from_job_id(job_id)
        return DistEnv(rank, local_rank, world, addr, port, "slurm", local_world)

    # 5. a plain process (also the batch shell of a SLURM job: not a task of a step).
    addr = env.get("MASTER_ADDR") or "127.0.0.1"
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else free_port()
    return DistEnv(0, 0, 1, addr, port, "single", 1)


# --------------------------------------------------------------------------------------------
# side effects


def setup_distributed_env(
    env: Optional[MutableMapping[str, str]] = None,
    resolve_master: Optional[Resolver] = None,
) -> DistEnv:
    """Derive the distributed environment and write it into ``env`` (``os.environ``).

    Sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT``.  When more than one rank runs and ``OMP_NUM_THREADS`` is unset, sets it
    the way torchrun does (1; under SLURM ``SLURM_CPUS_PER_TASK`` when given), because the
    deepspeed launcher and srun do not and oversubscribed OpenMP threads make CPU training
    several times slower.  If torch is already imported its intra-op pool is resized too.

    Call this first, before ``torch.distributed``/DeepSpeed initialisation.
    """
    target = os.environ if env is None else env
    dist_env = derive_dist_env(target, resolve_master=resolve_master)
    target.update(dist_env.as_env())

    if dist_env.world_size > 1 and not target.get("OMP_NUM_THREADS"):
        threads = "1"
        cpt = target.get("SLURM_CPUS_PER_TASK", "")
        if dist_env.launcher == "slurm" and cpt.isdigit() and int(cpt) > 0:
            threads = cpt
        target["OMP_NUM_THREADS"] = threads
        torch = sys.modules.get("torch")
        if env is None and torch is not None:
            try:
                torch.set_num_threads(int(threads))
            except Exception:  # pragma: no cover - best effort only
                pass

    logger.info(
        "distributed env (%s): rank %d/%d, local rank %d/%d, master %s:%d",
        dist_env.launcher, dist_env.rank, dist_env.world_size, dist_env.local_rank,
        dist_env.local_world_size, dist_env.master_addr, dist_env.master_port,
    )
    return dist_env


def _main(argv: Optional[list[str]] = None) -> int:
    """``python -m hyperscale.launch``: print what this process would be (for job scripts)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m hyperscale.launch", description=_main.__doc__)
    p.add_argument("--master-addr-of", metavar="NODELIST",
                   help="print the address of the first node of a SLURM node list and exit")
    a = p.parse_args(argv)
    if a.master_addr_of:
        if not shutil.which("scontrol"):
            print("scontrol not found", file=sys.stderr)
            return 1
        print(slurm_first_node_address(a.master_addr_of))
        return 0
    d = derive_dist_env(dict(os.environ))
    for k, v in d.as_env().items():
        print(f"{k}={v}")
    print(f"LAUNCHER={d.launcher}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
