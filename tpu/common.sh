# Shared by the tpu/*.sh scripts: argument parsing, shell quoting, and --dry-run.
#
# Every script takes --name, --zone, --project (defaults: $TPU_NAME, $ZONE, $PROJECT_ID) and
# --dry-run, which prints each gcloud command, quoted so it can be pasted into a shell, instead
# of running it.

set -euo pipefail

NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT_ID:-}"
DRY_RUN=0
REST=()                                  # Arguments the common parser did not recognise.
REMOTE_DIR='~/jaxscale'                  # The checkout on every TPU worker...
REMOTE_VENV='~/jaxscale-venv'            # ...and the Python 3.11+ environment it is installed in.

die() {
  echo "error: $*" >&2
  exit 2
}

# Quotes one argument for a POSIX shell: plain words as they are, anything else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out=() arg
  for arg in "$@"; do out+=("$(quote "$arg")"); done
  printf '%s' "${out[*]}"
}

parse_common_args() {
  while (($#)); do
    case "$1" in
      --name) NAME="${2:?--name needs a value}"; shift 2 ;;
      --name=*) NAME="${1#*=}"; shift ;;
      --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
      --zone=*) ZONE="${1#*=}"; shift ;;
      --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --project=*) PROJECT="${1#*=}"; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  [[ -n "$NAME" ]] || die "--name (or \$TPU_NAME) is required."
  [[ -n "$ZONE" ]] || die "--zone (or \$ZONE) is required, e.g. --zone=us-central2-b."
}

# --zone and, when given, --project: the flags every gcloud tpus command takes.
location_flags() {
  LOCATION=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then LOCATION+=("--project=$PROJECT"); fi
}

run() {
  if ((DRY_RUN)); then
    quote_all "$@"
    echo
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# Runs a shell command line on every worker of the TPU VM (all hosts of a pod slice at once).
on_all_workers() {
  location_flags
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$1"
}
