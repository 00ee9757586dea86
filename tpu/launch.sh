#!/usr/bin/env bash
# Runs one training job on every worker of a TPU VM (one process per host; on a pod slice JAX
# joins them into one job). Arguments after the flags below, e.g. --config.model.d_model=512,
# go to `python -m jaxscale.main` unchanged. Each worker's output is kept in ~/jaxscale-logs and
# copied to WORKDIR/logs/ when the run ends.
#
#   tpu/launch.sh --name my-tpu --zone us-west4-a --config configs/default.py \
#     --workdir gs://BUCKET/runs/NAME [--detach] [--dry-run] [--config.KEY=VALUE ...]
#
# --detach starts the job under nohup and returns, so closing the SSH session does not stop it.

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "$0")/common.sh"

parse_common_args "$@"
CONFIG='' WORKDIR='' DETACH=0 OVERRIDES=()
set -- "${REST[@]+"${REST[@]}"}"
while (($#)); do
  case "$1" in
    --config) CONFIG="${2:?}"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --workdir) WORKDIR="${2:?}"; shift 2 ;;
    --workdir=*) WORKDIR="${1#*=}"; shift ;;
    --detach) DETACH=1; shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    --config.*) OVERRIDES+=("$1"); shift ;;
    *) die "unknown argument $(quote "$1"); config overrides look like --config.KEY=VALUE." ;;
  esac
done
[[ -n "$CONFIG" ]] || die "--config is required (a file relative to the checkout, e.g. configs/default.py)."
[[ -n "$WORKDIR" ]] || die "--workdir is required; on a pod slice use gs://BUCKET/... (every host writes there)."

train="$REMOTE_VENV/bin/python -m jaxscale.main $(quote_all "--config=$CONFIG" "--workdir=$WORKDIR" \
  "${OVERRIDES[@]+"${OVERRIDES[@]}"}")"
log_dir=$(quote "$WORKDIR/logs")
if [[ "$WORKDIR" == gs://* ]]; then
  copy_log="gcloud storage cp \"\$log\" $log_dir/\$(hostname).log"
else
  copy_log="mkdir -p $log_dir && cp \"\$log\" $log_dir/\$(hostname).log"
fi
# Keep the trainer's exit status (not tee's), after copying the log.
script="cd $REMOTE_DIR && mkdir -p ~/jaxscale-logs && log=~/jaxscale-logs/\$(date +%Y%m%d-%H%M%S).log && { $train 2>&1 | tee \"\$log\"; status=\${PIPESTATUS[0]}; $copy_log; exit \$status; }"
if ((DETACH)); then
  script="nohup bash -c $(quote "$script") > /dev/null 2>&1 < /dev/null &"
fi

on_all_workers "$script"
