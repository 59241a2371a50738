"""Scheduler tests: slurm/train.sbatch on a real (local, two-node) SLURM cluster.

Needs `bash tests/slurm/start_cluster.sh` first; skipped when no cluster answers.
Every run is the tiny CPU config; each test compares train_log.jsonl with one
single-process run of the same config and global batch.

  1. two ranks on two nodes train to the end with the single-process losses
     (and the same through the torchrun launch mode, submitted with `hyperscale slurm`);
  2. `scancel --signal=USR1` mid-run: checkpoint, requeue, resume, same losses
     (and a plain `scancel` stays cancelled: no requeue);
  3. one rank SIGKILLed: the job ends within the process-group timeout naming the rank,
     and the last checkpoint resumes to the same losses.

Knobs: HYPERSCALE_SLURM_TEST_STEPS (steps per run), HYPERSCALE_SLURM_TEST_CONFIG.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from helpers import REPO, wait_until

pytestmark = pytest.mark.slurm

CONFIG = os.environ.get("HYPERSCALE_SLURM_TEST_CONFIG", "configs/tiny-cpu.yaml")
STEPS = int(os.environ.get("HYPERSCALE_SLURM_TEST_STEPS", "12"))
CKPT_EVERY = max(1, STEPS // 3)
PG_TIMEOUT_S = 30
#: the same for every run, so all of them can be compared with one reference
COMMON = [f"train.max_steps={STEPS}", f"distributed.timeout_s={PG_TIMEOUT_S}"]
REL_TOL = 1e-5
ABS_TOL = 1e-6

_ENV_DROP = re.compile(
    r"^(SLURM_|SLURMD_|SRUN_|SBATCH_|RANK$|LOCAL_RANK$|WORLD_SIZE$|LOCAL_WORLD_SIZE$|"
    r"MASTER_ADDR$|MASTER_PORT$|TORCHELASTIC_|GROUP_RANK$|LOCAL_SIZE$|CROSS_)")


def _clean_env(base: dict[str, str]) -> dict[str, str]:
    """`base` without any launcher/job variables (pytest may itself run inside a job)."""
    env = {k: v for k, v in base.items() if not _ENV_DROP.match(k)}
    if "SLURM_CONF" in base:
        env["SLURM_CONF"] = base["SLURM_CONF"]
    env["HYPERSCALE_PYTHON"] = sys.executable
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------------------- helpers
def read_losses(output_dir: Path) -> dict[int, float]:
    """step -> loss from train_log.jsonl; a step logged twice (re-run after a resume from an
    older checkpoint) keeps its last value."""
    path = output_dir / "train_log.jsonl"
    losses: dict[int, float] = {}
    if not path.exists():
        return losses
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if "step" in rec and "loss" in rec:
            losses[int(rec["step"])] = float(rec["loss"])
    return losses


def last_step(output_dir: Path) -> int:
    return max(read_losses(output_dir), default=0)


def assert_same_losses(got: dict[int, float], ref: dict[int, float]) -> None:
    assert sorted(got) == sorted(ref), (
        f"logged steps differ: missing {sorted(set(ref) - set(got))[:10]}, "
        f"extra {sorted(set(got) - set(ref))[:10]}")
    bad = [(s, got[s], ref[s]) for s in sorted(ref)
           if not math.isclose(got[s], ref[s], rel_tol=REL_TOL, abs_tol=ABS_TOL)]
    assert not bad, f"{len(bad)} step(s) differ from the single-process run, first: {bad[:5]}"


def assert_rank_one_wrote(output_dir: Path) -> None:
    """Rank 1 (the second node's task) took part: it wrote its own ZeRO optimizer shard into every
    checkpoint. Rank 1 prints nothing on a quiet run (log lines come from rank 0 only)."""
    ckpts = sorted((output_dir / "checkpoints").glob("step-*"))
    assert ckpts, f"no checkpoint under {output_dir / 'checkpoints'}"
    missing = [c.name for c in ckpts if not list(c.glob("*zero_pp_rank_1_mp_rank_00_optim_states.pt"))]
    assert not missing, f"checkpoints without rank 1's optimizer shard: {missing}"


class Job:
    """One sbatch submission of slurm/train.sbatch."""

    def __init__(self, env: dict[str, str], output_dir: Path, overrides: list[str],
                 nodes: int = 2, extra_env: Optional[dict[str, str]] = None,
                 cli_args: Optional[list[str]] = None) -> None:
        """Submit with `sbatch slurm/train.sbatch`, or, given `cli_args`, through
        `hyperscale slurm ... --submit` (which writes OUTPUT_DIR/<name>.sbatch first)."""
        self.env = dict(env, **(extra_env or {}))
        self.output_dir = output_dir
        if cli_args is None:
            self.log = output_dir.parent / f"{output_dir.name}.slurm.out"
            cmd = ["sbatch", "--parsable", "-N", str(nodes), "--job-name",
                   f"hs-{output_dir.name}", "-o", str(self.log), "slurm/train.sbatch", CONFIG,
                   f"output_dir={output_dir}", *overrides]
        else:
            cmd = [sys.executable, "-m", "hyperscale.cli", "slurm", CONFIG,
                   f"output_dir={output_dir}", *overrides, "--nodes", str(nodes),
                   "--python", sys.executable, *cli_args, "--submit"]
        out = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
        if cli_args is None:
            self.id = out.stdout.strip().split(";")[0]
        else:
            m = re.search(r"submitted job (\d+)", out.stdout)
            assert m, out.stdout
            self.id = m.group(1)
            self.log = output_dir / f"slurm-{self.id}.out"

    def info(self) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", self.id], env=self.env,
                             capture_output=True, text=True, timeout=30)
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def state(self) -> str:
        return self.info().get("JobState", "UNKNOWN")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, predicate, timeout: float, what: str, poll: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            state = self.state()
            if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                         "BOOT_FAIL", "DEADLINE", "COMPLETED") and not predicate():
                pytest.fail(f"job {self.id} is {state} while waiting for {what}\n"
                            f"{self.log_text()[-6000:]}")
            time.sleep(poll)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (job {self.id} "
                    f"{self.state()})\n{self.log_text()[-6000:]}")

    def wait_done(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info()
            state = info.get("JobState", "UNKNOWN")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"):
                return state
            time.sleep(0.3)
        pytest.fail(f"job {self.id} not finished after {timeout:.0f}s ({self.state()})\n"
                    f"{self.log_text()[-6000:]}")

    def rank_pid(self, rank: int) -> int:
        """pid of the trainer process of global rank `rank` (both nodes are this host)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                exe = os.path.basename(os.readlink(f"/proc/{entry}/exe"))
            except OSError:
                continue
            if (f"SLURM_JOB_ID={self.id}".encode() in environ
                    and f"SLURM_PROCID={rank}".encode() in environ
                    and exe.startswith("python") and b"hyperscale.train" in cmdline):
                found.append(int(entry))
        assert found, f"no trainer process of rank {rank} in job {self.id}"
        return min(found)  # the trainer itself, not a data-loader worker it forked later

    def processes(self) -> list[int]:
        """pids of every process of this job still running on this host (both nodes are this host)."""
        tag = f"SLURM_JOB_ID={self.id}".encode()
        found = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and tag in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                continue
        return found

    def cancel(self) -> None:
        subprocess.run(["scancel", self.id], env=self.env, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def env(slurm_cluster: dict[str, str]) -> dict[str, str]:
    if not (REPO / "hyperscale" / "train.py").exists() or not (REPO / CONFIG).exists():
        pytest.fail(f"the scheduler tests need hyperscale/train.py and {CONFIG}")
    return _clean_env(slurm_cluster)


@pytest.fixture(scope="module")
def reference(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Losses of one plain single-process run (no SLURM, no launcher)."""
    out_dir = tmp_path_factory.mktemp("slurm") / "reference"
    local = {k: v for k, v in env.items() if k != "SLURM_CONF"}
    cmd = [sys.executable, "-m", "hyperscale.train", CONFIG, f"output_dir={out_dir}", *COMMON,
           f"checkpoint.every_steps={CKPT_EVERY}"]
    p = subprocess.run(cmd, cwd=REPO, env=local, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"single-process run failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    losses = read_losses(out_dir)
    assert sorted(losses) == list(range(1, STEPS + 1)), (
        f"reference run logged steps {sorted(losses)[:5]}...{sorted(losses)[-5:]}, "
        f"expected 1..{STEPS}")
    return losses


@pytest.fixture
def jobs():
    submitted: list[Job] = []
    yield submitted
    for job in submitted:  # leave nothing running behind a failed test
        job.cancel()


# ---------------------------------------------------------------------------- tests
def test_two_nodes_match_single_process(env, reference, tmp_path, jobs):
    job = Job(env, tmp_path / "two-nodes", [*COMMON, f"checkpoint.every_steps={CKPT_EVERY}"])
    jobs.append(job)
    state = job.wait_done(timeout=240)
    log = job.log_text()
    assert state == "COMPLETED", f"job {job.id} {state}\n{log[-6000:]}"
    assert "launcher=srun world_size=2" in log, log[-3000:]
    assert re.search(r"^0: ", log, re.M), log[-3000:]  # srun --label prefixes task output
    assert_rank_one_wrote(job.output_dir)
    assert_same_losses(read_losses(job.output_dir), reference)


def test_two_nodes_torchrun_mode_via_hyperscale_slurm(env, reference, tmp_path, jobs):
    """The other launch mode (one srun task per node running torchrun), submitted through
    `hyperscale slurm --launcher torchrun --submit`."""
    job = Job(env, tmp_path / "torchrun", [*COMMON, f"checkpoint.every_steps={CKPT_EVERY}"],
              cli_args=["--launcher", "torchrun", "--pg-timeout", str(PG_TIMEOUT_S)])
    jobs.append(job)
    assert (job.output_dir / "hyperscale-tiny-cpu.sbatch").exists() or \
        list(job.output_dir.glob("*.sbatch")), "hyperscale slurm wrote no script"
    state = job.wait_done(timeout=240)
    log = job.log_text()
    assert state == "COMPLETED", f"job {job.id} {state}\n{log[-6000:]}"
    assert "launcher=torchrun world_size=2" in log, log[-3000:]
    assert re.search(r"^0: \[default0\]:", log, re.M), log[-3000:]  # srun --label, then torchrun's prefix
    assert_rank_one_wrote(job.output_dir)
    assert_same_losses(read_losses(job.output_dir), reference)


def test_preemption_checkpoints_requeues_and_resumes(env, reference, tmp_path, jobs):
    # No periodic checkpoint: the only one before the end is the preemption checkpoint.
    job = Job(env, tmp_path / "preempt", [*COMMON, "checkpoint.every_steps=1000000"])
    jobs.append(job)
    latest = job.output_dir / "checkpoints" / "latest"

    job.wait_for(lambda: last_step(job.output_dir) >= 1, timeout=180, what="a logged step")
    signalled_at = last_step(job.output_dir)
    assert signalled_at < STEPS - 3, (
        f"run nearly finished ({signalled_at}/{STEPS} steps) before it could be preempted; "
        f"raise HYPERSCALE_SLURM_TEST_STEPS")
    out = subprocess.run(["scancel", "--signal=USR1", job.id], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr

    # The job goes back to the queue (Restarts=1) with a checkpoint written before it left.
    job.wait_for(lambda: int(job.info().get("Restarts", "0")) >= 1, timeout=90,
                 what="the job to be requeued")
    assert latest.exists() and latest.read_text().strip(), "no checkpoint after preemption"
    stopped_at = last_step(job.output_dir)
    assert signalled_at <= stopped_at < STEPS, (signalled_at, stopped_at)

    state = job.wait_done(timeout=180)
    log = job.log_text()
    assert state == "COMPLETED", f"job {job.id} {state}\n{log[-6000:]}"
    assert "SIGUSR1" in log, log[-3000:]
    assert "restart 1" in log, log[-3000:]
    assert_same_losses(read_losses(job.output_dir), reference)


def test_plain_scancel_is_not_requeued(env, tmp_path, jobs):
    """`scancel JOB` also sends SIGTERM; the trainer stops but must not requeue the job."""
    job = Job(env, tmp_path / "cancel", [*COMMON, "checkpoint.every_steps=1000000"])
    jobs.append(job)
    job.wait_for(lambda: last_step(job.output_dir) >= 1, timeout=180, what="a logged step")
    out = subprocess.run(["scancel", job.id], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    job.wait_done(timeout=60)
    # only the job's own trainer can ask for a requeue (scontrol requeue, before it exits): once SLURM records the
    # job as ended and none of its processes is left, the decision has been made and recorded; polled, no fixed wait
    wait_until(lambda: not job.processes(), timeout=60, what=f"the processes of job {job.id} to end")
    info = job.info()
    assert (info.get("JobState"), info.get("Restarts")) == ("CANCELLED", "0"), (
        f"{info.get('JobState')} restarts={info.get('Restarts')}\n{job.log_text()[-4000:]}")


def test_killed_rank_ends_job_and_checkpoint_resumes(env, reference, tmp_path, jobs):
    out_dir = tmp_path / "killed"
    overrides = [*COMMON, f"checkpoint.every_steps={CKPT_EVERY}"]
    job = Job(env, out_dir, overrides)
    jobs.append(job)
    latest = out_dir / "checkpoints" / "latest"

    job.wait_for(lambda: latest.exists() and last_step(out_dir) >= CKPT_EVERY + 2,
                 timeout=180, what="a checkpoint and two more steps")
    pid = job.rank_pid(1)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    state = job.wait_done(timeout=PG_TIMEOUT_S + 60)
    elapsed = time.monotonic() - killed_at
    log = job.log_text()
    assert state == "FAILED", f"job {job.id} {state} after a rank was killed\n{log[-6000:]}"
    assert elapsed <= PG_TIMEOUT_S + 15, f"job took {elapsed:.0f}s to end after the kill"
    assert re.search(r"hyperscale: rank 1 \(node \S+, local rank 0\) was killed by signal 9",
                     log), log[-6000:]
    tag = latest.read_text().strip()
    assert tag, "latest checkpoint marker is empty"

    # The last complete checkpoint resumes (a new submission, same output_dir) to the end.
    job2 = Job(env, out_dir, overrides)
    jobs.append(job2)
    state = job2.wait_done(timeout=240)
    log2 = job2.log_text()
    assert state == "COMPLETED", f"resume job {job2.id} {state}\n{log2[-6000:]}"
    assert_same_losses(read_losses(out_dir), reference)
