#!/usr/bin/env bash
# Stop the private test cluster started by tests/slurm/start_cluster.sh.
# Cancels its jobs, then stops exactly the daemons recorded in its pid files (slurmd x2,
# slurmctld, munged): TERM, then KILL after 10 s. Safe to call twice or when nothing runs.
set -uo pipefail

DIR=${HYPERSCALE_SLURM_DIR:-/tmp/hyperscale-slurm-$(id -u)}
export SLURM_CONF=$DIR/slurm.conf
log() { echo "stop_cluster: $*" >&2; }

if [[ ! -d $DIR ]]; then
    log "nothing to stop ($DIR does not exist)"
    exit 0
fi

# pid_of PIDFILE NAME: print the pid in PIDFILE if that process is running and is NAME.
pid_of() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -d /proc/$pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    echo "$pid"
}

# Cancel this cluster's jobs first so no job step outlives its slurmd.
if pid_of "$DIR/slurmctld.pid" slurmctld >/dev/null && [[ -f $SLURM_CONF ]]; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 30); do
            [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

stop_one() {  # stop_one PIDFILE NAME
    local pid
    pid=$(pid_of "$1" "$2") || { rm -f "$1"; return 0; }
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        log "$2 (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

for pf in "$DIR"/slurmd-*.pid; do
    [[ -e $pf ]] && stop_one "$pf" slurmd
done
stop_one "$DIR/slurmctld.pid" slurmctld
stop_one "$DIR/munged.pid" munged
log "stopped (state and logs kept in $DIR)"
