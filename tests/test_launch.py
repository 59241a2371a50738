"""Unit tests: launch-environment derivation, preemption handler, `hyperscale slurm --dry-run`."""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hyperscale import launch
from hyperscale.cli import slurm as slurm_cli
from hyperscale.errors import ConfigError
from hyperscale.launch import DistEnv, derive_dist_env, port_from_job_id, setup_distributed_env
from hyperscale.training.preemption import PreemptionHandler

REPO = Path(__file__).resolve().parents[1]


def no_port() -> int:
    raise AssertionError("free_port must not be called here")


def no_resolver(nodelist: str) -> str:
    raise AssertionError("resolver must not be called here")


# ------------------------------------------------------------------------- SLURM variables
SRUN_TASK = {  # what srun gives task 5 of `sbatch -N 2 --ntasks-per-node=4`
    "SLURM_JOB_ID": "123456",
    "SLURM_JOBID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
}


def test_slurm_task_ranks_and_resolved_master():
    calls = []

    def resolver(nodelist: str) -> str:
        calls.append(nodelist)
        return "10.1.2.7"

    d = derive_dist_env(SRUN_TASK, resolve_master=resolver, free_port=no_port)
    assert d == DistEnv(rank=5, local_rank=1, world_size=8, master_addr="10.1.2.7",
                        master_port=20000 + 123456 % 10000, launcher="slurm",
                        local_world_size=4)
    assert calls == ["gpu[07-08]"]


def test_slurm_step_nodelist_wins_over_job_nodelist():
    env = dict(SRUN_TASK, SLURM_STEP_NODELIST="gpu08", SLURM_STEP_NUM_TASKS="4",
               SLURM_PROCID="2", SLURM_NODEID="0", SLURM_STEP_TASKS_PER_NODE="4")
    seen = []
    d = derive_dist_env(env, resolve_master=lambda nl: seen.append(nl) or "10.0.0.8",
                        free_port=no_port)
    assert seen == ["gpu08"] and d.world_size == 4 and d.rank == 2 and d.local_world_size == 4


def test_slurm_master_exported_by_the_job_script_is_used_without_resolving():
    env = dict(SRUN_TASK, MASTER_ADDR="192.168.0.9", MASTER_PORT="23457",
               HYPERSCALE_RENDEZVOUS_JOB="123456")
    d = derive_dist_env(env, resolve_master=no_resolver, free_port=no_port)
    assert (d.master_addr, d.master_port, d.launcher) == ("192.168.0.9", 23457, "slurm")


def test_slurm_ignores_stale_master_from_the_submitting_shell():
    env = dict(SRUN_TASK, MASTER_ADDR="localhost", MASTER_PORT="29500",
               HYPERSCALE_RENDEZVOUS_JOB="999")  # another job's, or none at all
    d = derive_dist_env(env, resolve_master=lambda nl: "10.1.2.7", free_port=no_port)
    assert (d.master_addr, d.master_port) == ("10.1.2.7", 23456)


def test_slurm_explicit_master_override():
    env = dict(SRUN_TASK, HYPERSCALE_MASTER_ADDR="ib0-gpu07", HYPERSCALE_MASTER_PORT="25000")
    d = derive_dist_env(env, resolve_master=no_resolver, free_port=no_port)
    assert (d.master_addr, d.master_port) == ("ib0-gpu07", 25000)


def test_slurm_falls_back_to_ntasks_and_uneven_tasks_per_node():
    env = {k: v for k, v in SRUN_TASK.items() if not k.startswith("SLURM_STEP_")}
    env.update(SLURM_STEP_ID="3", SLURM_NTASKS="5", SLURM_PROCID="4", SLURM_NODEID="1",
               SLURM_LOCALID="0", SLURM_TASKS_PER_NODE="4,1")
    d = derive_dist_env(env, resolve_master=lambda nl: "n1", free_port=no_port)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (4, 5, 0, 1)


def test_slurm_batch_shell_is_a_single_process():
    """The batch shell of `sbatch -N 2` has SLURM_PROCID=0, SLURM_NTASKS=2 but no step id."""
    env = {"SLURM_JOB_ID": "77", "SLURM_PROCID": "0", "SLURM_NTASKS": "2",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_LOCALID": "0"}
    d = derive_dist_env(env, resolve_master=no_resolver, free_port=lambda: 40000)
    assert (d.launcher, d.rank, d.world_size, d.master_port) == ("single", 0, 1, 40000)


def test_slurm_bad_rank_is_rejected():
    with pytest.raises(ValueError, match="rank 8 outside"):
        derive_dist_env(dict(SRUN_TASK, SLURM_PROCID="8"), resolve_master=lambda nl: "x")
    with pytest.raises(ValueError, match="not an integer"):
        derive_dist_env(dict(SRUN_TASK, SLURM_PROCID="abc"), resolve_master=lambda nl: "x")


def test_port_from_job_id():
    assert port_from_job_id("0") == 20000
    assert port_from_job_id(123456) == 23456
    assert port_from_job_id("29999") == 29999
    assert port_from_job_id("30000") == 20000
    ports = {port_from_job_id(j) for j in range(1, 200000, 7)}
    assert min(ports) >= launch.PORT_BASE and max(ports) < launch.PORT_BASE + launch.PORT_SPAN
    assert max(ports) < 32768, "must stay below Linux's ephemeral port range"
    with pytest.raises(ValueError):
        port_from_job_id("12_3")


def test_first_node_address_uses_scontrol_nodeaddr():
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        if cmd[:3] == ["scontrol", "show", "hostnames"]:
            return "gpu07\ngpu08\n"
        assert cmd == ["scontrol", "show", "node", "gpu07"]
        return ("NodeName=gpu07 Arch=x86_64 CoresPerSocket=32\n"
                "   NodeAddr=10.1.2.7 NodeHostName=gpu07-eth0 Version=22.05.8\n")

    assert launch.slurm_first_node_address("gpu[07-08]", run=fake_run) == "10.1.2.7"
    assert calls[0] == ["scontrol", "show", "hostnames", "gpu[07-08]"]


def test_first_node_address_falls_back_to_hostname_then_name():
    def no_addr(cmd):
        if cmd[2] == "hostnames":
            return "weird-node-name-xyz\n"
        return "NodeName=weird-node-name-xyz NodeAddr=(null) NodeHostName=realhost.example\n"

    assert launch.slurm_first_node_address("weird-node-name-xyz", run=no_addr) == \
        "realhost.example"

    def fails(cmd):
        if cmd[2] == "hostnames":
            return "localhost\n"
        raise subprocess.CalledProcessError(1, cmd)

    assert launch.slurm_first_node_address("localhost", run=fails) == \
        socket.gethostbyname("localhost")


def test_expand_tasks_per_node():
    assert launch.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert launch.expand_tasks_per_node("8") == [8]
    with pytest.raises(ValueError):
        launch.expand_tasks_per_node("2(y3)")


# ------------------------------------------------------------------------- launchers
def test_torchrun_variables_win_over_slurm():
    env = dict(SRUN_TASK, RANK="3", LOCAL_RANK="1", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2",
               MASTER_ADDR="node-a", MASTER_PORT="29400", GROUP_RANK="1",
               TORCHELASTIC_RUN_ID="abc", TORCHELASTIC_RESTART_COUNT="0")
    d = derive_dist_env(env, resolve_master=no_resolver, free_port=no_port)
    assert d == DistEnv(3, 1, 4, "node-a", 29400, "torchrun", 2)


def test_deepspeed_launcher_variables():
    # what deepspeed/launcher/launch.py sets for the second process of `deepspeed --num_gpus 2`
    env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500", "CROSS_RANK": "0", "CROSS_SIZE": "1", "LOCAL_SIZE": "2"}
    d = derive_dist_env(env, resolve_master=no_resolver, free_port=no_port)
    assert d == DistEnv(1, 1, 2, "127.0.0.1", 29500, "deepspeed", 2)


def test_generic_env_launcher_and_incomplete_launcher():
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    d = derive_dist_env(env, resolve_master=no_resolver, free_port=no_port)
    assert (d.launcher, d.local_rank, d.world_size) == ("env", 0, 2)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        derive_dist_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_SIZE": "2"})


def test_single_process_defaults():
    d = derive_dist_env({}, resolve_master=no_resolver, free_port=lambda: 45678)
    assert d == DistEnv(0, 0, 1, "127.0.0.1", 45678, "single", 1)
    assert not d.is_distributed and d.is_main
    d = derive_dist_env({}, resolve_master=no_resolver)  # a real free port
    assert 0 < d.master_port < 65536
    d = derive_dist_env({"MASTER_PORT": "31000"}, resolve_master=no_resolver, free_port=no_port)
    assert d.master_port == 31000


def test_setup_writes_env_and_omp_threads():
    env = dict(SRUN_TASK)
    d = setup_distributed_env(env, resolve_master=lambda nl: "10.1.2.7")
    assert d.launcher == "slurm"
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "10.1.2.7", "MASTER_PORT": "23456"}
    assert env["OMP_NUM_THREADS"] == "1"
    # idempotent: a second call sees the variables it set (generic launcher), same answer
    d2 = setup_distributed_env(env, resolve_master=no_resolver)
    assert (d2.rank, d2.world_size, d2.master_addr, d2.master_port) == (5, 8, "10.1.2.7", 23456)

    env = dict(SRUN_TASK, SLURM_CPUS_PER_TASK="6")
    setup_distributed_env(env, resolve_master=lambda nl: "x")
    assert env["OMP_NUM_THREADS"] == "6"
    env = dict(SRUN_TASK, OMP_NUM_THREADS="3")
    setup_distributed_env(env, resolve_master=lambda nl: "x")
    assert env["OMP_NUM_THREADS"] == "3"
    env = {}
    setup_distributed_env(env)
    assert "OMP_NUM_THREADS" not in env and env["WORLD_SIZE"] == "1"


def test_launch_module_prints_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_",
                                "TORCHELASTIC_", "GROUP_RANK", "CROSS_"))}
    out = subprocess.run([sys.executable, "-m", "hyperscale.launch"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "RANK=0" in out.stdout and "WORLD_SIZE=1" in out.stdout
    assert "LAUNCHER=single" in out.stdout


# ------------------------------------------------------------------------- preemption
@pytest.fixture
def handler():
    h = PreemptionHandler()
    yield h
    h.uninstall()


def test_signal_sets_flag_only(handler):
    before = signal.getsignal(signal.SIGUSR1)
    handler.install()
    assert handler.install() is handler  # idempotent
    assert not handler.received and not handler.should_stop()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert handler.received and handler.last_signal == signal.SIGUSR1
    assert handler.should_stop() and handler.should_stop()  # latched
    handler.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_second_signal_during_save_is_harmless(handler, tmp_path):
    handler.install()
    os.kill(os.getpid(), signal.SIGTERM)
    assert handler.should_stop()
    target = tmp_path / "ckpt.bin"
    with open(target, "wb") as f:  # "save", with signals landing in the middle of it
        f.write(b"a" * 1000)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b"b" * 1000)
    assert target.read_bytes() == b"a" * 1000 + b"b" * 1000
    assert handler.signal_count == 3 and handler.should_stop()


def test_configurable_signals_and_check_every():
    h = PreemptionHandler(signals=["USR2", "SIGHUP"], check_every=3)
    assert h.signals == (signal.SIGUSR2, signal.SIGHUP)
    h.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert h.received
        # calls 1, 4, 7... communicate/decide; a flag raised before call 2 is seen at call 4
        assert h.should_stop()  # call 1
    finally:
        h.uninstall()
    h2 = PreemptionHandler(check_every=3)
    assert not h2.should_stop()  # call 1 decides: no
    h2.trigger()
    assert not h2.should_stop() and not h2.should_stop()  # calls 2, 3 skip
    assert h2.should_stop()  # call 4
    with pytest.raises(ValueError):
        PreemptionHandler(check_every=0)


def fake_scontrol(state: str, calls: list, requeue_rc: int = 0):
    def run(cmd):
        calls.append(list(cmd))
        if cmd[:3] == ["scontrol", "show", "job"]:
            return 0, f"JobId={cmd[-1]} JobName=hs UserId=root(0) JobState={state} Reason=None\n"
        return requeue_rc, "" if requeue_rc == 0 else "Invalid job id specified"
    return run


def test_requeue_under_slurm_runs_scontrol(handler):
    calls = []
    h = PreemptionHandler(env={"SLURM_JOB_ID": "4242", "RANK": "0"},
                          run=fake_scontrol("RUNNING", calls))
    h.install()
    try:
        assert h.requeue() is True
        assert calls[-1] == ["scontrol", "requeue", "4242"]
        # after requeue SLURM's SIGTERM must not kill the exiting process
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        h.uninstall()

    calls.clear()
    h = PreemptionHandler(env={"SLURM_JOB_ID": "4242", "RANK": "1"},
                          run=lambda cmd: calls.append(cmd) or (0, ""))
    assert h.requeue() is False and calls == []  # only rank 0 requeues

    h = PreemptionHandler(env={"SLURM_JOB_ID": "4242"}, run=fake_scontrol("RUNNING", [], 1))
    assert h.requeue() is False  # failure is logged, not raised


@pytest.mark.parametrize("state", ["COMPLETING", "CANCELLED", "TIMEOUT"])
def test_requeue_skipped_when_slurm_is_ending_the_job(caplog, state):
    """`scancel JOB` sends SIGTERM too (the job shows COMPLETING); requeueing would undo it."""
    calls = []
    h = PreemptionHandler(env={"SLURM_JOB_ID": "77", "RANK": "0"},
                          run=fake_scontrol(state, calls))
    with caplog.at_level("WARNING"):
        assert h.requeue() is False
    assert ["scontrol", "requeue", "77"] not in calls and "not requeued" in caplog.text


def test_requeue_leaves_signals_alone_when_not_installed():
    before = signal.getsignal(signal.SIGTERM)
    PreemptionHandler(env={"SLURM_JOB_ID": "5", "RANK": "1"}).requeue()
    assert signal.getsignal(signal.SIGTERM) == before


def test_requeue_outside_slurm_only_logs(caplog):
    h = PreemptionHandler(env={}, run=lambda cmd: pytest.fail("must not run scontrol"))
    with caplog.at_level("WARNING"):
        assert h.requeue() is False
    assert "--resume auto" in caplog.text


TWO_RANKS = textwrap.dedent("""
    import os, signal, sys
    import torch.distributed as dist
    from hyperscale.launch import setup_distributed_env
    from hyperscale.training.preemption import PreemptionHandler
    d = setup_distributed_env()
    dist.init_process_group("gloo")
    h = PreemptionHandler().install()
    for step in range(1, 50):
        if d.rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is signalled
        if h.should_stop():
            print(f"STOP rank={d.rank} step={step} local={h.received} requeued={h.requeue()}")
            break
    dist.destroy_process_group()
""")


def test_should_stop_agrees_across_ranks():
    port = launch.find_free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", TWO_RANKS], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "STOP rank=0 step=3 local=False requeued=False" in outs[0][0]
    assert "STOP rank=1 step=3 local=True requeued=False" in outs[1][0]


# ------------------------------------------------------------------------- hyperscale slurm
def _parse(argv):
    parser = argparse.ArgumentParser(prog="hyperscale")
    sub = parser.add_subparsers(dest="command", required=True)
    p = slurm_cli.add_parser(sub)
    assert isinstance(p, argparse.ArgumentParser)
    return parser.parse_args(argv)


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("output_dir: runs/demo\ntrain:\n  max_steps: 10\n")
    return cfg


def test_slurm_dry_run_prints_rank_table_and_script(config, tmp_path):
    args = _parse(["slurm", str(config), "train.max_steps=5", "--nodes", "2",
                   "--gpus-per-node", "4", "--partition", "gpu", "--time", "12:00:00",
                   "--account", "proj1", "--cpus-per-task", "8", "--pg-timeout", "900",
                   "--dry-run"])
    assert args.func is slurm_cli.run
    buf = io.StringIO()
    assert args.func(args, out=buf) == 0
    text = buf.getvalue()
    assert "2 node(s) x 4 rank(s) = world size 8" in text
    rows = [line.split() for line in text.splitlines()
            if line.split() and line.split()[-1].startswith("cuda:")]
    assert [(r[0].rstrip("*"), r[1], r[2]) for r in rows] == [
        (str(n), str(l), str(4 * n + l)) for n in range(2) for l in range(4)]
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=12:00:00", "#SBATCH --account=proj1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --signal=USR1@120", "export HYPERSCALE_LAUNCHER=srun",
                 "export HYPERSCALE_PG_TIMEOUT_S=900"):
        assert line in text, line
    assert f"--output={tmp_path}/runs/demo/slurm-%j.out" in text
    assert f"slurm/train.sbatch {config} train.max_steps=5" in text
    assert not (tmp_path / "runs").exists(), "--dry-run must not write anything"
    # the header records every option the script was written with
    header = next(line for line in text.splitlines() if line.startswith("#   hyperscale slurm "))
    for option in ("--nodes 2", "--gpus-per-node 4", "--partition gpu", "--time 12:00:00", "--account proj1",
                   "--cpus-per-task 8", "--pg-timeout 900", "train.max_steps=5"):
        assert option in header, (option, header)


def test_slurm_torchrun_layout_and_cpu(config):
    buf = io.StringIO()
    args = _parse(["slurm", str(config), "--nodes", "2", "--gpus-per-node", "8",
                   "--launcher", "torchrun", "--dry-run"])
    assert slurm_cli.run(args, out=buf) == 0
    text = buf.getvalue()
    assert "#SBATCH --ntasks-per-node=1" in text and "HYPERSCALE_PROCS_PER_NODE=8" in text
    assert "world size 16" in text
    buf = io.StringIO()
    assert slurm_cli.run(_parse(["slurm", str(config), "-N", "2", "--dry-run"]), out=buf) == 0
    text = buf.getvalue()
    assert "#SBATCH --gpus-per-node" not in text
    assert text.count(" cpu\n") == 2


def test_slurm_writes_script_and_never_overwrites_silently(config, tmp_path):
    buf = io.StringIO()
    assert slurm_cli.run(_parse(["slurm", str(config), "-N", "2"]), out=buf) == 0
    script = tmp_path / "runs/demo/hyperscale-run.sbatch"
    assert script.exists() and os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    first = script.read_text()
    # same request again: kept as is
    assert slurm_cli.run(_parse(["slurm", str(config), "-N", "2"]), out=io.StringIO()) == 0
    # a different request: refused, file untouched
    assert slurm_cli.run(_parse(["slurm", str(config), "-N", "4"]), out=io.StringIO()) == 1
    assert script.read_text() == first
    assert slurm_cli.run(_parse(["slurm", str(config), "-N", "4", "--force"]),
                         out=io.StringIO()) == 0
    assert "#SBATCH --nodes=4" in script.read_text()


def test_slurm_rejects_bad_input(config):
    with pytest.raises(ConfigError, match="--time 'tomorrow'"):
        slurm_cli.run(_parse(["slurm", str(config), "--time", "tomorrow", "--dry-run"]))
    with pytest.raises(ConfigError, match="key.sub=value"):
        slurm_cli.run(_parse(["slurm", str(config), "notanoverride", "--dry-run"]))
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        slurm_cli.run(_parse(["slurm", "missing.yaml", "--dry-run"]))
    with pytest.raises(SystemExit):
        _parse(["slurm", str(config), "--dry-run", "--submit"])


def test_job_scripts_are_valid_bash_and_refuse_outside_slurm():
    for script in ("slurm/train.sbatch", "slurm/make_hostfile.sh",
                   "tests/slurm/start_cluster.sh", "tests/slurm/stop_cluster.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0, script
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run(["bash", str(REPO / "slurm/train.sbatch"), "cfg.yaml"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "not inside a SLURM job" in out.stderr
