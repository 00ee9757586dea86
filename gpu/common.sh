# Shared by gpu/launch.sh and gpu/submit.sh: --config/--workdir/override parsing, shell quoting
# and --dry-run (print each command, quoted so it can be pasted into a shell, instead of running).

set -euo pipefail

CONFIG='' WORKDIR='' DRY_RUN=0 OVERRIDES=() REST=()

die() {
  echo "error: $*" >&2
  exit 2
}

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

run() {
  if ((DRY_RUN)); then
    quote_all "$@"
    echo
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# Fills CONFIG, WORKDIR, DRY_RUN, OVERRIDES (--config.KEY=VALUE, or anything after --) and REST.
parse_run_args() {
  while (($#)); do
    case "$1" in
      --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
      --config=*) CONFIG="${1#*=}"; shift ;;
      --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
      --workdir=*) WORKDIR="${1#*=}"; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      --) shift; OVERRIDES+=("$@"); break ;;
      --config.*) OVERRIDES+=("$1"); shift ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  [[ -n "$CONFIG" ]] || die "--config is required, e.g. --config configs/default.py."
  [[ -n "$WORKDIR" ]] || die "--workdir is required (a directory every node can reach)."
}

# The trainer command line every process runs.
train_command() {
  TRAIN=("${PYTHON:-python3}" -m jaxscale.main "--config=$CONFIG" "--workdir=$WORKDIR"
         "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
}
