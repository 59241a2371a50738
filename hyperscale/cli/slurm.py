"""``hyperscale slurm``: write (and optionally submit) an sbatch script for one training run.

    hyperscale slurm CONFIG [key.sub=value ...] --nodes N --gpus-per-node G
        [--partition P] [--time T] [--account A] [--qos Q] [--cpus-per-task C] [--mem M]
        [--constraint C] [--job-name NAME] [--launcher srun|torchrun] [--signal-seconds S]
        [--pg-timeout S] [--script PATH] [--force] [--sbatch-arg ARG ...]
        [--dry-run | --submit]

The script is rendered from ``slurm/job.sbatch.template``: ``#SBATCH`` lines for the
requested resources, then ``exec bash slurm/train.sbatch CONFIG overrides`` (which starts the
ranks, sets MASTER_ADDR/MASTER_PORT and handles preemption).  By default it is written to
``OUTPUT_DIR/<job-name>.sbatch`` and the job log goes to ``OUTPUT_DIR/slurm-<jobid>.out``.

* ``--dry-run``: print the rank table and the script; write and submit nothing.
* neither flag: write the script and print the rank table and the ``sbatch`` command.
* ``--submit``: write the script and submit it with ``sbatch``.

An existing script with different content is never replaced unless ``--force`` is given.

Bad input raises :class:`hyperscale.errors.ConfigError` (one ``hyperscale: error:`` line, exit 2, through the
dispatcher's handler); an existing script that differs, a missing or failing ``sbatch`` exit 1.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import shlex
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

from ..atomic import write_text_atomic
from ..errors import ConfigError
from ..training.config import AUTO, load_config
from ..training.geometry import batch_geometry

__all__ = ["add_parser", "run", "rank_table", "render_script", "format_rank_table"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO_ROOT / "slurm"
TEMPLATE = SLURM_DIR / "job.sbatch.template"
TRAIN_SBATCH = SLURM_DIR / "train.sbatch"

_TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")
_OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w.\-]*=")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``slurm`` sub-command on an ``argparse`` subparsers object.

    Sets ``func=run`` as the parser default, so ``args.func(args)`` dispatches here.
    """
    p = subparsers.add_parser(
        "slurm",
        help="write/submit a SLURM batch script for a training run",
        description=("Write an sbatch script for CONFIG from slurm/job.sbatch.template; "
                     "--dry-run prints the rank table and the script, --submit submits it. "
                     "Overrides (key.sub=value) go right after CONFIG."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides passed to the trainer")
    p.add_argument("-N", "--nodes", type=int, default=1, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, default=0,
                   help="GPUs per node; 0 = CPU (one rank per node)")
    p.add_argument("--partition", "-p", help="SLURM partition")
    p.add_argument("--time", "-t", help="time limit, e.g. 24:00:00 or 2-00:00:00")
    p.add_argument("--account", "-A", help="SLURM account")
    p.add_argument("--qos", help="SLURM QOS")
    p.add_argument("--cpus-per-task", "-c", type=int, help="CPUs per rank (srun) or per node (torchrun)")
    p.add_argument("--mem", help="memory per node, e.g. 200G (0 = all)")
    p.add_argument("--constraint", "-C", help="node features, e.g. a100")
    p.add_argument("--exclusive", action="store_true", help="whole nodes")
    p.add_argument("--job-name", "-J", help="job name (default: hyperscale-<config name>)")
    p.add_argument("--launcher", choices=("srun", "torchrun"), default="srun",
                   help="srun: one SLURM task per rank; torchrun: one task per node running "
                        "torchrun --nproc-per-node G")
    p.add_argument("--signal-seconds", type=int, default=120,
                   help="send SIGUSR1 this many seconds before the time limit (checkpoint + requeue)")
    p.add_argument("--pg-timeout", type=int, metavar="SECONDS",
                   help="process-group timeout (sets distributed.timeout_s)")
    p.add_argument("--python", default=sys.executable,
                   help="python interpreter the ranks run")
    p.add_argument("--script", type=Path,
                   help="where to write the sbatch script (default OUTPUT_DIR/<job-name>.sbatch)")
    p.add_argument("--log", help="job log path (default OUTPUT_DIR/slurm-%%j.out)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option written as an #SBATCH line (repeatable), "
                        "e.g. --sbatch-arg=--mail-type=END")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing script with different content")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the rank table and the script; write and submit nothing")
    mode.add_argument("--submit", action="store_true", help="write the script and run sbatch")


# ------------------------------------------------------------------------------ pieces
@dataclass(frozen=True)
class RankSlot:
    node: int
    local_rank: int
    rank: int
    device: str


def rank_table(nodes: int, gpus_per_node: int) -> list[RankSlot]:
    """Global rank layout: ranks fill node 0 first (SLURM's block distribution, torchrun's
    node-rank order), ``rank = node * per_node + local_rank``."""
    per_node = max(gpus_per_node, 1)
    return [
        RankSlot(n, l, n * per_node + l, f"cuda:{l}" if gpus_per_node > 0 else "cpu")
        for n in range(nodes) for l in range(per_node)
    ]


def format_rank_table(slots: Sequence[RankSlot], max_rows: int = 64) -> str:
    lines = [f"{'node':>6}  {'local_rank':>10}  {'global_rank':>11}  device"]
    rows = list(slots)
    skipped = 0
    if len(rows) > max_rows:
        head, tail = rows[: max_rows // 2], rows[-max_rows // 2:]
        skipped = len(rows) - len(head) - len(tail)
        rows = head + [None] + tail  # type: ignore[list-item]
    for s in rows:
        if s is None:
            lines.append(f"{'...':>6}  ({skipped} more ranks)")
            continue
        node = f"{s.node}*" if s.node == 0 else str(s.node)
        lines.append(f"{node:>6}  {s.local_rank:>10}  {s.rank:>11}  {s.device}")
    lines.append("(* node 0 = first node of the allocation: MASTER_ADDR, rank 0)")
    return "\n".join(lines)


def _validate(args: argparse.Namespace) -> str:
    """Refuse bad options and a config the trainer would refuse; returns the batch geometry line to print."""
    if args.nodes < 1:
        raise ConfigError("--nodes must be >= 1")
    if args.gpus_per_node < 0:
        raise ConfigError("--gpus-per-node must be >= 0")
    if args.time and not _TIME_RE.match(args.time):
        raise ConfigError(f"--time {args.time!r} is not a SLURM time "
                         "(MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM:SS)")
    if args.signal_seconds < 0 or args.signal_seconds > 65535:
        raise ConfigError("--signal-seconds must be in [0, 65535]")
    bad = [o for o in args.overrides if not _OVERRIDE_RE.match(o)]
    if bad:
        raise ConfigError(f"overrides must look like key.sub=value: {bad}")
    if not Path(args.config).is_file():
        raise ConfigError(f"config {args.config} not found")
    for name in ("cpus_per_task", "ntasks_per_node"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cfg = load_config(args.config, list(args.overrides))  # the trainer would refuse the job later: refuse it now
    # the global batch must split over nodes x ranks per node (the trainer checks it again at start-up)
    world = args.nodes * max(args.gpus_per_node, 1)
    geometry = batch_geometry(cfg, world)
    if cfg.train.micro_batch_size != AUTO:
        return f"batch: {geometry}"
    per = cfg.train.global_batch_size // world
    return (f"batch: global batch {cfg.train.global_batch_size} = {per} example(s) per rank x {world} rank(s); "
            f"train.micro_batch_size=auto: the largest divisor of {per} that fits, chosen at start-up")


def render_script(args: argparse.Namespace, script: Path, log: str, workdir: Path,
                  command: str) -> str:
    """The sbatch script text for ``args`` (no I/O besides reading the template)."""
    gpus = args.gpus_per_node
    per_node = max(gpus, 1)
    if args.launcher == "torchrun":
        tasks_per_node = 1
    else:
        tasks_per_node = per_node
    job_name = args.job_name or f"hyperscale-{Path(args.config).stem}"

    sb = [
        f"--job-name={job_name}",
        f"--nodes={args.nodes}",
        f"--ntasks-per-node={tasks_per_node}",
    ]
    if gpus > 0:
        sb.append(f"--gpus-per-node={gpus}")
    for flag, value in (("--cpus-per-task", args.cpus_per_task), ("--partition", args.partition),
                        ("--time", args.time), ("--account", args.account), ("--qos", args.qos),
                        ("--mem", args.mem), ("--constraint", args.constraint)):
        if value not in (None, ""):
            sb.append(f"{flag}={value}")
    if args.exclusive:
        sb.append("--exclusive")
    sb += [f"--output={log}", "--open-mode=append", "--requeue"]
    if args.signal_seconds > 0:
        sb.append(f"--signal=USR1@{args.signal_seconds}")
    for extra in args.sbatch_arg:
        extra = extra.strip()
        if not extra.startswith("-"):
            raise ConfigError(f"--sbatch-arg {extra!r} must start with '-'")
        sb.append(extra)
    sbatch_lines = "\n".join(f"#SBATCH {line}" for line in sb)

    exports = []
    if args.launcher == "torchrun":
        exports.append(f"export HYPERSCALE_PROCS_PER_NODE={per_node}")
    if args.pg_timeout:
        exports.append(f"export HYPERSCALE_PG_TIMEOUT_S={int(args.pg_timeout)}")

    train_args = " ".join(shlex.quote(a) for a in [args.config, *args.overrides])
    template = string.Template(TEMPLATE.read_text())
    return template.substitute(
        created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        command=command,
        script=shlex.quote(str(script)),
        nodes=args.nodes,
        procs_per_node=per_node,
        world_size=args.nodes * per_node,
        launcher=args.launcher,
        sbatch_lines=sbatch_lines,
        python=shlex.quote(args.python),
        workdir=shlex.quote(str(workdir)),
        extra_exports="\n".join(exports),
        train_sbatch=shlex.quote(str(TRAIN_SBATCH)),
        train_args=train_args,
    )


def _options(args: argparse.Namespace) -> list[str]:
    """Every option the script was written with, as command-line words (recorded in its header)."""
    skip = {"func", "command", "config", "overrides", "dry_run", "submit", "force"}
    words: list[str] = []
    for name, value in sorted(vars(args).items()):
        flag = "--" + name.replace("_", "-")
        if name in skip or value is None or value is False or value == []:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [f"{flag}={v}" for v in value]
        else:
            words += [flag, str(value)]
    return words


def _same_ignoring_timestamp(a: str, b: str) -> bool:
    strip = re.compile(r"^# Written by `hyperscale slurm` on .*$", re.M)
    return strip.sub("", a) == strip.sub("", b)


# ------------------------------------------------------------------------------ command
def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Execute ``hyperscale slurm`` for parsed ``args``; returns the process exit code."""
    batch_line = _validate(args)
    if not TEMPLATE.is_file() or not TRAIN_SBATCH.is_file():
        raise ConfigError(f"{TEMPLATE} or {TRAIN_SBATCH} missing "
                         "(run from a hyperscale checkout)")
    workdir = Path.cwd()
    job_name = args.job_name or f"hyperscale-{Path(args.config).stem}"
    out_path = workdir / load_config(args.config, list(args.overrides)).output_dir  # the run's, as the trainer reads it
    script = (args.script if args.script is not None else out_path / f"{job_name}.sbatch")
    script = script if script.is_absolute() else workdir / script
    log = args.log or str(out_path / "slurm-%j.out")

    command = "hyperscale slurm " + " ".join(shlex.quote(a) for a in (args.config, *args.overrides, *_options(args)))
    text = render_script(args, script, log, workdir, command)

    per_node = max(args.gpus_per_node, 1)
    print(f"{args.nodes} node(s) x {per_node} rank(s) = world size {args.nodes * per_node} "
          f"(launcher: {args.launcher})", file=out)
    print(batch_line, file=out)
    print(format_rank_table(rank_table(args.nodes, args.gpus_per_node)), file=out)

    if args.dry_run:
        print(f"\n# --dry-run: would write {script} and run: sbatch {script}\n", file=out)
        print(text, file=out)
        return 0

    if script.exists():
        existing = script.read_text()
        if _same_ignoring_timestamp(existing, text):
            print(f"{script} already exists with the same content; keeping it", file=out)
        elif not args.force:
            print(f"hyperscale slurm: {script} exists and differs; not overwriting "
                  "(use --force, or --script for another path)", file=sys.stderr)
            return 1
        else:
            print(f"overwriting {script} (--force)", file=out)
            _write(script, text)
    else:
        _write(script, text)
        print(f"wrote {script}", file=out)
    Path(log).parent.mkdir(parents=True, exist_ok=True)  # SLURM does not create it

    if not args.submit:
        print(f"submit with: sbatch {shlex.quote(str(script))}", file=out)
        return 0
    if shutil.which("sbatch") is None:
        print("hyperscale slurm: sbatch not found on PATH", file=sys.stderr)
        return 1
    p = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"hyperscale slurm: sbatch failed: {p.stderr.strip()}", file=sys.stderr)
        return p.returncode or 1
    job_id = p.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}; log: {log.replace('%j', job_id)}", file=out)
    return 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text, mode=0o755)
