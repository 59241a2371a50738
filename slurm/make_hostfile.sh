#!/usr/bin/env bash
# Write a DeepSpeed launcher hostfile ("HOST slots=N" per node) for the current SLURM allocation,
# for sites that allow ssh between nodes (the deepspeed launcher starts remote ranks with pdsh).
#
#   salloc -N 2 --gpus-per-node 8            # or inside an sbatch script
#   slurm/make_hostfile.sh -o hostfile       # prints MASTER_ADDR=... on stderr
#   deepspeed --hostfile hostfile --master_addr "$(slurm/make_hostfile.sh --master)" \
#       --master_port 29500 --no_local_rank --module hyperscale.train CONFIG [overrides]
#
# Options:
#   -o FILE     write to FILE instead of stdout
#   -s SLOTS    slots (ranks) per node; default: GPUs per node of the allocation, else 1
#   -a KIND     what to write for each node: hostname (NodeHostname, default; what ssh/pdsh
#               resolve), addr (NodeAddr), name (the SLURM node name)
#   --master    print only the first node's NodeAddr (for --master_addr) and exit
set -euo pipefail

out=""
slots=""
kind=hostname
master_only=0
while (($#)); do
    case $1 in
        -o) out=$2; shift 2 ;;
        -s) slots=$2; shift 2 ;;
        -a) kind=$2; shift 2 ;;
        --master) master_only=1; shift ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "make_hostfile.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
if [[ -z $nodelist ]]; then
    echo "make_hostfile.sh: no SLURM allocation (SLURM_JOB_NODELIST unset); run it inside salloc/sbatch" >&2
    exit 1
fi
case $kind in hostname | addr | name) ;; *) echo "make_hostfile.sh: -a must be hostname, addr or name" >&2; exit 2 ;; esac

if [[ -z $slots ]]; then
    slots=${SLURM_GPUS_ON_NODE:-}
    if [[ -z $slots && -n ${SLURM_GPUS_PER_NODE:-} ]]; then slots=${SLURM_GPUS_PER_NODE##*:}; fi
    [[ $slots =~ ^[0-9]+$ && $slots -gt 0 ]] || slots=1
fi

node_field() {  # node_field NODE FIELD: a field of `scontrol show node NODE`, empty if unset
    scontrol show node "$1" 2>/dev/null | grep -oE "(^| )$2=[^ ]+" | head -n 1 | cut -d= -f2 |
        grep -v '^(null)$' || true
}

mapfile -t nodes < <(scontrol show hostnames "$nodelist")
if ((master_only)); then
    addr=$(node_field "${nodes[0]}" NodeAddr)
    echo "${addr:-${nodes[0]}}"
    exit 0
fi

lines=()
for n in "${nodes[@]}"; do
    case $kind in
        name) host=$n ;;
        addr) host=$(node_field "$n" NodeAddr) ;;
        hostname) host=$(node_field "$n" NodeHostName) ;;
    esac
    lines+=("${host:-$n} slots=$slots")
done

if [[ -n $out ]]; then
    printf '%s\n' "${lines[@]}" >"$out"
    echo "make_hostfile.sh: wrote $out (${#nodes[@]} node(s), $slots slot(s) each)" >&2
else
    printf '%s\n' "${lines[@]}"
fi
first_addr=$(node_field "${nodes[0]}" NodeAddr)
echo "MASTER_ADDR=${first_addr:-${nodes[0]}}" >&2
