"""Launch a planned sweep's runs as trainer subprocesses, resumably.

A run whose summary.json says finished is skipped; any other is (re)launched with the same
command, and the trainer resumes from its own checkpoints. Cooldown branches wait for their trunk,
then start from a copy of the trunk's checkpoint (see `cooldown`). Each run's output goes to
runs/<name>/train.log. `print_commands` gives the same commands for a cluster scheduler instead.
While it works, `run_all` reports on stderr each run started, finished (with its final eval loss)
or failed (with the end of its train.log), and the sweep's counts with an estimated time left.
"""

import collections
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

from jaxscale import paths
from jaxscale.scaling.sweeps import sweep as sweep_lib

POLL_SECONDS = 2.0
LOG_TAIL_LINES = 10  # Of a failed run's train.log, shown in the report.


def run_dir(sweep_dir, run) -> str:
  return os.path.join(sweep_dir, 'runs', run['name'])


def log_path(workdir) -> str:
  return os.path.join(workdir, 'train.log')


def read_summary(workdir) -> dict:
  """The run's summary.json, or {} if it wrote none (it has not finished)."""
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def is_finished(workdir) -> bool:
  return bool(read_summary(workdir).get('finished'))


def print_commands(sweep_dir, stream=None) -> None:
  """One shell line per unfinished run, trunks first; a branch's line first copies its trunk's
  checkpoint."""
  sweep_dir = paths.resolve_str(sweep_dir)
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


def run_all(sweep_dir, parallel=1, stream=None) -> dict:
  """Runs every unfinished run, at most `parallel` at once. Returns {finished, failed, skipped}.

  Progress goes to `stream` (default stderr), so stdout stays free for the caller's result.
  """
  sweep_dir = paths.resolve_str(sweep_dir)  # Trainers get absolute workdirs, whatever their cwd.
  sweep = sweep_lib.load(sweep_dir)
  pending = [run for run in sweep['runs'] if not is_finished(run_dir(sweep_dir, run))]
  skipped = len(sweep['runs']) - len(pending)
  progress = Progress(len(sweep['runs']), skipped, parallel, stream or sys.stderr)
  running, failed, finished = {}, [], []
  while pending or running:
    for name, (process, log) in list(running.items()):
      if process.poll() is not None:
        log.close()
        del running[name]
        workdir = run_dir(sweep_dir, {'name': name})
        if process.returncode == 0:
          finished.append(name)
          progress.finished(name, workdir)
        else:
          failed.append(name)
          progress.failed(name, workdir, process.returncode)
    for run in [run for run in pending if run.get('branch_from', {}).get('run') in failed]:
      pending.remove(run)
      failed.append(run['name'])  # Its trunk failed; there is nothing to branch from.
      progress.not_started(run['name'], f'its trunk {run["branch_from"]["run"]} failed')
    for run in _ready(pending, sweep_dir)[:max(0, parallel - len(running))]:
      pending.remove(run)
      running[run['name']] = _launch(sweep, sweep_dir, run)
      progress.started(run['name'], run_dir(sweep_dir, run))
    if running:
      time.sleep(POLL_SECONDS)
    elif pending:  # Nothing runs and nothing can start: branches of a trunk that never finished.
      for run in pending:
        failed.append(run['name'])
        progress.not_started(run['name'], f'its trunk {run["branch_from"]["run"]} never finished')
      pending = []
  return {'finished': finished, 'failed': failed, 'skipped': skipped}


class Progress:
  """One line per event of a sweep on `stream`, each followed by the counts and time left.

  Time left: the mean wall time of the runs finished so far, for each run still to start and for
  what remains of each running one, shared among the `parallel` slots.
  """

  def __init__(self, total: int, skipped: int, parallel: int, stream):
    self._total, self._skipped, self._parallel, self._stream = total, skipped, parallel, stream
    self._start_times = {}  # Running run -> when it started (time.monotonic).
    self._wall_times = []   # Of the runs finished in this sweep.
    self._num_finished = self._num_failed = 0
    if skipped:
      self._say(f'{skipped} of {total} runs already finished; skipping them.')

  def started(self, name: str, workdir: str) -> None:
    self._start_times[name] = time.monotonic()
    self._say(f'started {name} in {workdir}')

  def finished(self, name: str, workdir: str) -> None:
    self._wall_times.append(time.monotonic() - self._start_times.pop(name))
    self._num_finished += 1
    self._say(f'finished {name}: eval loss {_eval_loss_text(workdir)} '
              f'({_duration(self._wall_times[-1])})')

  def failed(self, name: str, workdir: str, returncode: int) -> None:
    self._start_times.pop(name)
    self._num_failed += 1
    tail = ''.join(f'    {line}' for line in _last_lines(log_path(workdir), LOG_TAIL_LINES))
    self._say(f'FAILED {name} (exit status {returncode}); its log: {log_path(workdir)}\n'
              f'  last lines:\n{tail}'.rstrip())

  def not_started(self, name: str, reason: str) -> None:
    self._num_failed += 1
    self._say(f'FAILED {name}: not started, {reason}')

  def _say(self, event: str) -> None:
    print(f'[sweep] {event}\n[sweep] {self._counts()}', file=self._stream, flush=True)

  def _num_done(self) -> int:
    return self._num_finished + self._num_failed + self._skipped

  def _num_pending(self) -> int:
    return self._total - self._num_done() - len(self._start_times)

  def _counts(self) -> str:
    return (f'{self._num_done()}/{self._total} done ({self._num_finished} finished, '
            f'{self._num_failed} failed, {self._skipped} skipped), {len(self._start_times)} '
            f'running, {self._num_pending()} pending; {self._time_left()}')

  def _time_left(self) -> str:
    if not self._wall_times:
      return 'time left: unknown until a run finishes'
    mean, now = sum(self._wall_times) / len(self._wall_times), time.monotonic()
    remaining = mean * self._num_pending() + sum(max(0.0, mean - (now - start))
                                                 for start in self._start_times.values())
    return f'time left: ~{_duration(remaining / max(1, self._parallel))}'


def _eval_loss_text(workdir) -> str:
  loss = read_summary(workdir).get('eval_loss')
  return f'{loss:.4f}' if isinstance(loss, (int, float)) else 'unknown (none in summary.json)'


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


def _last_lines(path, count: int) -> list[str]:
  if not os.path.exists(path):
    return []
  with open(path, errors='replace') as f:
    return list(collections.deque(f, maxlen=count))


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
  log = open(log_path(workdir), 'a')
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
