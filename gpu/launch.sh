#!/usr/bin/env bash
# Trains on every GPU of this machine: one process drives all local GPUs (the mesh spans them).
# Arguments like --config.model.d_model=512 go to `python -m jaxscale.main` unchanged; output is
# also written to WORKDIR/train.log.
#
#   gpu/launch.sh --config configs/default.py --workdir workdirs/run [--gpus 0,1] [--dry-run]
#                 [--config.KEY=VALUE ...]
#
# $PYTHON picks the interpreter (default python3); install with `pip install -e '.[cuda]'`.

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "$0")/common.sh"

parse_run_args "$@"
GPUS=''
set -- "${REST[@]+"${REST[@]}"}"
while (($#)); do
  case "$1" in
    --gpus) GPUS="${2:?}"; shift 2 ;;
    --gpus=*) GPUS="${1#*=}"; shift ;;
    *) die "unknown argument $(quote "$1"); config overrides look like --config.KEY=VALUE." ;;
  esac
done

train_command
if [[ -n "$GPUS" ]]; then TRAIN=(env "CUDA_VISIBLE_DEVICES=$GPUS" "${TRAIN[@]}"); fi
if ((DRY_RUN)); then
  echo "$(quote_all "${TRAIN[@]}") 2>&1 | tee -a $(quote "$WORKDIR/train.log")"
  exit 0
fi
mkdir -p "$WORKDIR"
echo "+ $(quote_all "${TRAIN[@]}")" >&2
"${TRAIN[@]}" 2>&1 | tee -a "$WORKDIR/train.log"
