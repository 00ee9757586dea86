#!/usr/bin/env bash
# Submits gpu/slurm.sbatch: N nodes x G GPUs, one jaxscale process per node, SLURM's log in
# WORKDIR/logs/slurm-JOBID.out. Run it from the repository root on the cluster's login node.
#
#   gpu/submit.sh --nodes 2 --gpus-per-node 8 --config configs/default.py \
#     --workdir /shared/runs/NAME [--partition P] [--time 24:00:00] [--dry-run] [--config.KEY=VALUE ...]

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "$0")/common.sh"

parse_run_args "$@"
NODES=1 GPUS_PER_NODE=8 SBATCH_EXTRA=()
set -- "${REST[@]+"${REST[@]}"}"
while (($#)); do
  case "$1" in
    --nodes) NODES="${2:?}"; shift 2 ;;
    --nodes=*) NODES="${1#*=}"; shift ;;
    --gpus-per-node) GPUS_PER_NODE="${2:?}"; shift 2 ;;
    --gpus-per-node=*) GPUS_PER_NODE="${1#*=}"; shift ;;
    --partition|--time|--account) SBATCH_EXTRA+=("$1=${2:?}"); shift 2 ;;
    --partition=*|--time=*|--account=*) SBATCH_EXTRA+=("$1"); shift ;;
    *) die "unknown argument $(quote "$1"); config overrides look like --config.KEY=VALUE." ;;
  esac
done

if ((!DRY_RUN)); then mkdir -p "$WORKDIR/logs"; fi
run sbatch "--nodes=$NODES" "--gpus-per-node=$GPUS_PER_NODE" "--output=$WORKDIR/logs/slurm-%j.out" \
  "${SBATCH_EXTRA[@]+"${SBATCH_EXTRA[@]}"}" "$(dirname "$0")/slurm.sbatch" \
  "--config=$CONFIG" "--workdir=$WORKDIR" "${OVERRIDES[@]+"${OVERRIDES[@]}"}"
