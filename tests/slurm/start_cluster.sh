#!/usr/bin/env bash
# Start a private two-node SLURM cluster on this host for the scheduler tests.
#
#   bash tests/slurm/start_cluster.sh        # start (no-op if already running)
#   bash tests/slurm/stop_cluster.sh         # stop every daemon started here
#
# Everything lives in one private folder (default /tmp/hyperscale-slurm-$UID, override with
# HYPERSCALE_SLURM_DIR): slurm.conf, state, spool, logs, pid files and a private munge socket,
# so nothing in /etc is touched and a system munged/slurmctld is not disturbed.
# Clients find the cluster through SLURM_CONF=$DIR/slurm.conf (written to $DIR/env.sh; the
# scheduler tests pick it up on their own).
#
# Needs root (slurmd runs jobs as the submitting user) and Debian's packages:
#   apt-get install -y slurm-wlm munge
#
# Ports (override if another cluster runs on this host): slurmctld HYPERSCALE_SLURMCTLD_PORT
# (default 6817), slurmd HYPERSCALE_SLURMD_PORT and +1 (default 17001, 17002).
set -euo pipefail

DIR=${HYPERSCALE_SLURM_DIR:-/tmp/hyperscale-slurm-$(id -u)}
CTLD_PORT=${HYPERSCALE_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${HYPERSCALE_SLURMD_PORT:-17001}
NODES=(node1 node2)
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket

log() { echo "start_cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- install check -------------------------------------------------------------------------
missing=()
for bin in munged slurmctld slurmd sinfo scontrol sbatch srun squeue scancel; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if ((${#missing[@]})); then
    die "missing ${missing[*]}; install with: apt-get install -y slurm-wlm munge"
fi
[[ $(id -u) -eq 0 ]] || die "must run as root (slurmd starts job steps as the submitting user)"
[[ -r /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (created by the munge package)"

pid_alive() {  # pid_alive PIDFILE NAME: the pid in PIDFILE is running and is NAME
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

export SLURM_CONF=$CONF

if pid_alive "$DIR/slurmctld.pid" slurmctld && pid_alive "$DIR/munged.pid" munged; then
    all_up=1
    for n in "${NODES[@]}"; do pid_alive "$DIR/slurmd-$n.pid" slurmd || all_up=0; done
    if ((all_up)); then
        log "already running (SLURM_CONF=$CONF)"
        exit 0
    fi
    die "partially running; run tests/slurm/stop_cluster.sh first"
fi

mkdir -p "$DIR"/{state,log,munge} "$DIR"/spool/{node1,node2}
chmod 700 "$DIR/munge"
HOST=$(hostname -s)

cat >"$CONF" <<EOF
# Written by tests/slurm/start_cluster.sh: two nodes on one host, for tests only.
ClusterName=hyperscale-test
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (default 120 s): keep requeue tests short.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
# Keep finished jobs visible to scontrol (there is no accounting database).
MinJobAge=900
KillWait=10
InactiveLimit=0
SlurmdTimeout=60
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=node[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$SLURMD_PORT-$((SLURMD_PORT + 1)) CPUs=1 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$DIR/env.sh" <<EOF
export SLURM_CONF=$CONF
EOF

log "starting munged (socket $MUNGE_SOCKET)"
munged --force --socket="$MUNGE_SOCKET" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    --key-file=/etc/munge/munge.key
for _ in $(seq 50); do [[ -S $MUNGE_SOCKET ]] && break; sleep 0.1; done
[[ -S $MUNGE_SOCKET ]] || die "munged did not create $MUNGE_SOCKET (see $DIR/log/munged.log)"

log "starting slurmctld"
slurmctld -i -f "$CONF"
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping >/dev/null 2>&1 || die "slurmctld not answering (see $DIR/log/slurmctld.log)"

for n in "${NODES[@]}"; do
    log "starting slurmd $n"
    slurmd -f "$CONF" -N "$n"
done

log "waiting for the nodes to become idle"
deadline=$((SECONDS + 60))
while :; do
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ')
    n_idle=$(sinfo -h -N -o '%T' 2>/dev/null | grep -c '^idle$' || true)
    [[ $n_idle -ge ${#NODES[@]} ]] && break
    if ((SECONDS > deadline)); then
        die "nodes not idle after 60 s: $states (logs in $DIR/log)"
    fi
    if grep -qE 'down|drain|unknown' <<<"$states"; then
        scontrol update NodeName=node[1-2] State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
log "cluster up: $states(SLURM_CONF=$CONF)"
