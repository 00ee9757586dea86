#!/usr/bin/env bash
# Creates a Cloud TPU VM, directly or as a queued resource (waits for capacity; needed for
# spot/preemptible and for most large slices).
#
#   tpu/create.sh --name my-tpu --zone us-west4-a --accelerator-type v5litepod-8 [--project P]
#                 [--version RUNTIME] [--queued] [--spot] [--dry-run]

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "$0")/common.sh"

parse_common_args "$@"
ACCELERATOR_TYPE='' VERSION='' QUEUED=0 SPOT=0
set -- "${REST[@]+"${REST[@]}"}"
while (($#)); do
  case "$1" in
    --accelerator-type) ACCELERATOR_TYPE="${2:?}"; shift 2 ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}"; shift ;;
    --version) VERSION="${2:?}"; shift 2 ;;
    --version=*) VERSION="${1#*=}"; shift ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    *) die "unknown argument $(quote "$1") (see --help)." ;;
  esac
done
[[ -n "$ACCELERATOR_TYPE" ]] || die "--accelerator-type is required, e.g. v5litepod-8, v4-32, v5p-16."

# The runtime (TPU VM image) that goes with each generation.
if [[ -z "$VERSION" ]]; then
  case "$ACCELERATOR_TYPE" in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default runtime for $ACCELERATOR_TYPE; pass --version." ;;
  esac
fi

location_flags
spot=()
if ((SPOT)); then spot=(--spot); fi
if ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION" "${spot[@]+"${spot[@]}"}"
  if ((!DRY_RUN)); then
    echo "Queued. Watch it with: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE" >&2
  fi
else
  run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" "${spot[@]+"${spot[@]}"}"
fi
