#!/usr/bin/env bash
# Deletes a TPU VM (with --queued: its queued resource and the VM with it).
#
#   tpu/delete.sh --name my-tpu --zone us-west4-a [--queued] [--dry-run]

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "$0")/common.sh"

parse_common_args "$@"
QUEUED=0
set -- "${REST[@]+"${REST[@]}"}"
while (($#)); do
  case "$1" in
    --queued) QUEUED=1; shift ;;
    *) die "unknown argument $(quote "$1") (see --help)." ;;
  esac
done

location_flags
if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
fi
