"""Launch a planned sweep's runs as trainer subprocesses, resumably.

A run whose summary.json says finished is skipped; any other is (re)launched with the same
command, and the trainer resumes from its own checkpoints. Cooldown branches wait for their trunk,
then start from a copy of the trunk's checkpoint (see `cooldown`). Each run's output goes to
runs/<name>/train.log. `print_commands` gives the same commands for a cluster scheduler instead.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from jaxscale.scaling import sweep as sweep_lib

POLL_SECONDS = 2.0


def run_dir(sweep_dir, run) -> str:
  return os.path.join(sweep_dir, 'runs', run['name'])


def is_finished(workdir) -> bool:
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return bool(json.load(f).get('finished'))


def print_commands(sweep_dir, stream=None) -> None:
  """One shell line per unfinished run, trunks first; a branch's line first copies its trunk's
  checkpoint."""
  sweep = sweep_lib.load(sweep_dir)
  for run in sorted(sweep['runs'], key=lambda run: 'branch_from' in run):
    workdir = run_dir(sweep_dir, run)
    if is_finished(workdir):
      continue
    line = ' '.join(sweep_lib.command(sweep, run, workdir))
    if 'branch_from' in run:
      source = _trunk_checkpoint(sweep_dir, run)
      line = (f'[ -d {workdir}/checkpoints ] || (mkdir -p {workdir}/checkpoints && '
              f'cp -r {source} {workdir}/checkpoints/) && {line}')
      line = f'# after {run["branch_from"]["run"]} finishes\n{line}'
    print(line, file=stream or sys.stdout)


def run_all(sweep_dir, parallel=1) -> dict:
  """Runs every unfinished run, at most `parallel` at once. Returns {finished, failed, skipped}."""
  sweep = sweep_lib.load(sweep_dir)
  pending = [run for run in sweep['runs'] if not is_finished(run_dir(sweep_dir, run))]
  skipped = len(sweep['runs']) - len(pending)
  running, failed, finished = {}, [], []
  while pending or running:
    for name, (process, log) in list(running.items()):
      if process.poll() is not None:
        log.close()
        del running[name]
        (finished if process.returncode == 0 else failed).append(name)
    for run in [run for run in pending if run.get('branch_from', {}).get('run') in failed]:
      pending.remove(run)
      failed.append(run['name'])  # Its trunk failed; there is nothing to branch from.
    for run in _ready(pending, sweep_dir)[:max(0, parallel - len(running))]:
      pending.remove(run)
      running[run['name']] = _launch(sweep, sweep_dir, run)
    if running:
      time.sleep(POLL_SECONDS)
    elif pending:  # Nothing runs and nothing can start: branches of a trunk that never finished.
      failed.extend(run['name'] for run in pending)
      pending = []
  return {'finished': finished, 'failed': failed, 'skipped': skipped}


def _ready(pending, sweep_dir):
  """Runs that can start now: all but branches whose trunk has not finished."""
  def trunk_done(run):
    trunk = run.get('branch_from', {}).get('run')
    return trunk is None or is_finished(os.path.join(sweep_dir, 'runs', trunk))
  return [run for run in pending if trunk_done(run)]


def _launch(sweep, sweep_dir, run):
  """Starts the run; returns (process, its open log file)."""
  workdir = run_dir(sweep_dir, run)
  os.makedirs(workdir, exist_ok=True)
  if 'branch_from' in run and not os.path.exists(os.path.join(workdir, 'checkpoints')):
    _seed_branch(sweep_dir, run, workdir)
  log = open(os.path.join(workdir, 'train.log'), 'a')
  process = subprocess.Popen(sweep_lib.command(sweep, run, workdir), stdout=log,
                             stderr=subprocess.STDOUT)
  return process, log


def _trunk_checkpoint(sweep_dir, run) -> str:
  branch = run['branch_from']
  return os.path.join(sweep_dir, 'runs', branch['run'], 'checkpoints', str(branch['step']))


def _seed_branch(sweep_dir, run, workdir) -> None:
  """Copies the trunk's checkpoint, and its metrics up to that step, into the branch's workdir."""
  source = _trunk_checkpoint(sweep_dir, run)
  if not os.path.isdir(source):
    raise FileNotFoundError(
        f'Branch {run["name"]} needs checkpoint {source}; the trunk kept no checkpoint there.')
  shutil.copytree(source, os.path.join(workdir, 'checkpoints', str(run['branch_from']['step'])))
  trunk_metrics = os.path.join(os.path.dirname(os.path.dirname(source)), 'metrics.jsonl')
  if os.path.exists(trunk_metrics):
    with open(trunk_metrics) as f:
      rows = [line for line in f if json.loads(line)['step'] <= run['branch_from']['step']]
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      f.writelines(rows)
