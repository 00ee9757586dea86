#!/usr/bin/env bash
# Installs jaxscale and jax[tpu] on every worker of a TPU VM: a checkout in ~/jaxscale and a
# Python 3.11 environment in ~/jaxscale-venv (TPU images ship an older Python; uv provides one).
# Rerun it to update the checkout to the newest commit of --branch.
#
#   tpu/setup.sh --name my-tpu --zone us-west4-a [--repo URL] [--branch main] [--dry-run]

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "$0")/common.sh"

parse_common_args "$@"
REPO=https://github.com/jaxscale/jaxscale BRANCH=main
set -- "${REST[@]+"${REST[@]}"}"
while (($#)); do
  case "$1" in
    --repo) REPO="${2:?}"; shift 2 ;;
    --repo=*) REPO="${1#*=}"; shift ;;
    --branch) BRANCH="${2:?}"; shift 2 ;;
    --branch=*) BRANCH="${1#*=}"; shift ;;
    *) die "unknown argument $(quote "$1") (see --help)." ;;
  esac
done

steps=(
  "set -e"
  "if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch -q --depth=1 origin $(quote "$BRANCH") && git -C $REMOTE_DIR checkout -q FETCH_HEAD; else git clone -q --depth=1 --branch=$(quote "$BRANCH") $(quote "$REPO") $REMOTE_DIR; fi"
  "export PATH=\$HOME/.local/bin:\$PATH"
  "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh"
  "[ -x $REMOTE_VENV/bin/python ] || uv venv --python 3.11 $REMOTE_VENV"
  "uv pip install --python $REMOTE_VENV/bin/python -e $REMOTE_DIR'[tpu]'"
  "$REMOTE_VENV/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'"
)
script=$(printf '%s; ' "${steps[@]}")
script=${script%; }

on_all_workers "$script"
