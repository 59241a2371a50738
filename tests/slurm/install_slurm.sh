#!/usr/bin/env bash
# Install Debian's SLURM and MUNGE for the scheduler tests if they are missing (about 10 s).
# A no-op when munged, slurmctld, slurmd and sinfo are already there; needs root and apt-get.
set -euo pipefail

have_all() {
    local bin
    for bin in munged slurmctld slurmd sinfo sbatch srun scontrol scancel; do
        command -v "$bin" >/dev/null 2>&1 || return 1
    done
}

if have_all; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: SLURM/MUNGE missing and cannot install (need root and apt-get):" \
        "apt-get install -y slurm-wlm munge" >&2
    exit 1
fi
echo "install_slurm: apt-get install -y slurm-wlm munge" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q slurm-wlm munge >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
fi
have_all || { echo "install_slurm: SLURM still incomplete after install" >&2; exit 1; }
