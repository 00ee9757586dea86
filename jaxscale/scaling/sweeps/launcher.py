"""Launch a planned sweep's runs as trainer subprocesses, resumably.

A run whose summary.json says finished is skipped; any other is (re)launched with the same
command, and the trainer resumes from its own checkpoints. Cooldown branches wait for their trunk,
then start from a copy of the trunk's checkpoint (see `cooldown`). Each run's output goes to
runs/<name>/train.log. `print_commands` gives the same commands for a cluster scheduler instead.

Runs that differ only in learning rate, weight decay, seed or init scale share one process, a
multi program (`grouping`), unless `multi` is off; its output goes to groups/<first run>.log,
which each member's train.log names. A multi program keeps no checkpoints: a stopped group is
relaunched, from step 0, for its members that have not finished.

While it works, `run_all` reports on stderr each run started, finished (with its final eval loss)
or failed (with the end of its log), and the sweep's counts with an estimated time left.
"""

import collections
import datetime
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

from jaxscale.core import paths
from jaxscale.scaling.sweeps import grouping, sweep as sweep_lib

POLL_SECONDS = 2.0
LOG_TAIL_LINES = 10  # Of a failed run's train.log, shown in the report.
JOBS_FILE = 'jobs.json'


def run_dir(sweep_dir, run) -> str:
  return os.path.join(sweep_dir, 'runs', run['name'])


def log_path(workdir) -> str:
  return os.path.join(workdir, 'train.log')


def group_log_path(sweep_dir, launch: grouping.Launch) -> str:
  return os.path.join(sweep_dir, 'groups', f'{launch.name}.log')


def read_summary(workdir) -> dict:
  """The run's summary.json, or {} if it wrote none (it has not finished)."""
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def is_finished(workdir) -> bool:
  return bool(read_summary(workdir).get('finished'))


def read_jobs(sweep_dir) -> dict:
  """DIR/jobs.json: run name -> the job or process that trains it ({launcher, job_id or pid, ...})."""
  path = os.path.join(sweep_dir, JOBS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write_jobs(sweep_dir, jobs: dict) -> None:
  path = os.path.join(sweep_dir, JOBS_FILE)
  with open(f'{path}.tmp', 'w') as f:
    json.dump(jobs, f, indent=1)
  os.replace(f'{path}.tmp', path)  # A kill mid-write leaves the old record, never half of one.



def print_commands(sweep_dir, stream=None, multi: bool | None = None,
                   max_models: int | None = None, target: str = 'shell',
                   tpu: dict | None = None) -> None:
  """One shell line per unfinished run or group of runs sharing a program, trunks first; a
  branch's line first copies its trunk's checkpoint. `multi`, `max_models`: as for run_all.

  target 'tpu': one `tpu/launch.sh` line per run (every host of the TPU VM or slice runs it;
  `tpu` gives its --name and --zone, and --project if set), its config path relative to the
  checkout, which launch.sh enters on every worker."""
  sweep_dir = paths.resolve_str(sweep_dir)
  sweep = sweep_lib.load(sweep_dir)
  unfinished = [run for run in sorted(sweep['runs'], key=lambda run: 'branch_from' in run)
                if not is_finished(run_dir(sweep_dir, run))]
  multi, max_models = grouping.options(sweep, multi, max_models)
  if target == 'tpu':
    multi = False  # tpu/launch.sh runs the trainer, one run per slice.
  for launch in _launches(sweep, sweep_dir, unfinished, multi, max_models):
    run = launch.runs[0]
    workdirs = [run_dir(sweep_dir, member) for member in launch.runs]
    command = launch.command(sweep, workdirs)
    line = (' '.join(command) if target != 'tpu' else
            tpu_launch_line(command, tpu or {}))
    if launch.is_group:
      line = f'# {", ".join(member["name"] for member in launch.runs)}: one program\n{line}'
    elif 'branch_from' in run:
      source = _trunk_checkpoint(sweep_dir, run)
      line = (f'[ -d {workdirs[0]}/checkpoints ] || (mkdir -p {workdirs[0]}/checkpoints && '
              f'cp -r {source} {workdirs[0]}/checkpoints/) && {line}')
      line = f'# after {run["branch_from"]["run"]} finishes\n{line}'
    print(line, file=stream or sys.stdout)


def tpu_launch_line(command: list[str], tpu: dict) -> str:
  """`tpu/launch.sh --name N --zone Z [--project P] --config C --workdir W --config.K=V ...` for a
  trainer command `python -m jaxscale.main --config=C --workdir=W ...`."""
  args = command[3:]
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  words = ['tpu/launch.sh']
  for key in ('name', 'zone', 'project'):  # Unset: launch.sh reads $TPU_NAME, $ZONE, $PROJECT_ID.
    if tpu.get(key):
      words += [f'--{key}', tpu[key]]
  for arg in args:
    key, _, value = arg.partition('=')
    if key == '--config':
      relative = os.path.relpath(value, repo)
      words += ['--config', value if relative.startswith('..') else relative]
    elif key == '--workdir':
      words += ['--workdir', value]
    else:
      words.append(arg)
  return shlex.join(words)


def run_all(sweep_dir, parallel=1, stream=None, multi: bool | None = None,
            max_models: int | None = None) -> dict:
  """Runs every unfinished run, at most `parallel` processes at once. Returns {finished, failed,
  skipped}, lists of run names (skipped: a count).

  `multi` (default: the spec's `multi`, else True) trains runs that share a program together, up
  to `max_models` (default: the spec's `max_models_per_program`, else 16) per process. Progress
  goes to `stream` (default stderr), so stdout stays free for the caller's result.
  """
  sweep_dir = paths.resolve_str(sweep_dir)  # Trainers get absolute workdirs, whatever their cwd.
  sweep = sweep_lib.load(sweep_dir)
  multi, max_models = grouping.options(sweep, multi, max_models)
  grouper = grouping.Grouper(sweep, sweep_dir, max_models) if multi else None
  pending = [run for run in sweep['runs'] if not is_finished(run_dir(sweep_dir, run))]
  skipped = len(sweep['runs']) - len(pending)
  progress = Progress(len(sweep['runs']), skipped, parallel, stream or sys.stderr)
  running, failed, finished = {}, [], []  # running: launch name -> (process, log file, launch).
  while pending or running:
    for name, (process, log, launch) in list(running.items()):
      if process.poll() is not None:
        log.close()
        del running[name]
        for run in launch.runs:
          workdir = run_dir(sweep_dir, run)
          # A group's exit status is the program's; a member that stopped on a non-finite loss
          # wrote no finished summary while the others went on.
          if process.returncode == 0 and (not launch.is_group or is_finished(workdir)):
            finished.append(run['name'])
            progress.finished(run['name'], workdir)
          else:
            failed.append(run['name'])
            progress.failed(run['name'], log.name, process.returncode)
    for run in [run for run in pending if run.get('branch_from', {}).get('run') in failed]:
      pending.remove(run)
      failed.append(run['name'])  # Its trunk failed; there is nothing to branch from.
      progress.not_started(run['name'], f'its trunk {run["branch_from"]["run"]} failed')
    free = max(0, parallel - len(running))
    ready = _ready(pending, sweep_dir) if free else []
    for launch in _launches(sweep, sweep_dir, ready, multi, max_models, grouper)[:free]:
      for run in launch.runs:
        pending.remove(run)
      running[launch.name] = (*_launch(sweep, sweep_dir, launch), launch)
      _record_process(sweep_dir, launch, running[launch.name][0].pid)
      progress.started([run['name'] for run in launch.runs], run_dir(sweep_dir, launch.runs[0]),
                       running[launch.name][1].name)
    if running:
      time.sleep(POLL_SECONDS)
    elif pending:  # Nothing runs and nothing can start: branches of a trunk that never finished.
      for run in pending:
        failed.append(run['name'])
        progress.not_started(run['name'], f'its trunk {run["branch_from"]["run"]} never finished')
      pending = []
  return {'finished': finished, 'failed': failed, 'skipped': skipped}


def _launches(sweep, sweep_dir, runs, multi, max_models, grouper=None) -> list[grouping.Launch]:
  if not multi:
    return [grouping.Launch((run,)) for run in runs]
  return (grouper or grouping.Grouper(sweep, sweep_dir, max_models)).launches(runs)


class Progress:
  """One line per event of a sweep on `stream`, each followed by the counts and time left.

  Counts are of runs: a group of K runs in one program is K running, then K finished or failed.
  Time left: the mean slot time per run finished so far (a group's wall time shared among its
  runs), for each run still to start and for what remains of each running process, shared among
  the `parallel` slots.
  """

  def __init__(self, total: int, skipped: int, parallel: int, stream):
    self._total, self._skipped, self._parallel, self._stream = total, skipped, parallel, stream
    self._processes = {}    # Running run -> (when its process started, runs in that process).
    self._slot_times = []   # Per run finished in this sweep: its process's wall time / its runs.
    self._num_finished = self._num_failed = 0
    if skipped:
      self._say(f'{skipped} of {total} runs already finished; skipping them.')

  def started(self, names: list[str], workdir: str, log: str) -> None:
    """One process started for `names` (one run in `workdir`, or a group sharing a program)."""
    process = (time.monotonic(), len(names))
    for name in names:
      self._processes[name] = process
    if len(names) == 1:
      self._say(f'started {names[0]} in {workdir}')
    else:
      self._say(f'started {len(names)} runs in one program ({", ".join(names)}); its log: {log}')

  def finished(self, name: str, workdir: str) -> None:
    wall_time = self._end(name)
    self._num_finished += 1
    self._say(f'finished {name}: eval loss {_eval_loss_text(workdir)} '
              f'({_duration(wall_time)})')

  def failed(self, name: str, log: str, returncode: int) -> None:
    """`log`: the output of the run's process (its train.log, or its group's log)."""
    self._end(name, count=False)
    self._num_failed += 1
    status = (f'exit status {returncode}' if returncode else
              'its program went on, but it wrote no finished summary.json')
    tail = ''.join(f'    {line}' for line in _last_lines(log, LOG_TAIL_LINES))
    self._say(f'FAILED {name} ({status}); its log: {log}\n  last lines:\n{tail}'.rstrip())

  def not_started(self, name: str, reason: str) -> None:
    self._num_failed += 1
    self._say(f'FAILED {name}: not started, {reason}')

  def _end(self, name: str, count: bool = True) -> float:
    """The wall time of `name`'s process so far; a finished run adds its share to the mean."""
    start, size = self._processes.pop(name)
    wall_time = time.monotonic() - start
    if count:
      self._slot_times.append(wall_time / size)
    return wall_time

  def _say(self, event: str) -> None:
    print(f'[sweep] {event}\n[sweep] {self._counts()}', file=self._stream, flush=True)

  def _num_done(self) -> int:
    return self._num_finished + self._num_failed + self._skipped

  def _num_pending(self) -> int:
    return self._total - self._num_done() - len(self._processes)

  def _counts(self) -> str:
    return (f'{self._num_done()}/{self._total} done ({self._num_finished} finished, '
            f'{self._num_failed} failed, {self._skipped} skipped), {len(self._processes)} '
            f'running, {self._num_pending()} pending; {self._time_left()}')

  def _time_left(self) -> str:
    if not self._slot_times:
      return 'time left: unknown until a run finishes'
    mean, now = sum(self._slot_times) / len(self._slot_times), time.monotonic()
    running = {id(process): process for process in self._processes.values()}.values()
    remaining = mean * self._num_pending() + sum(max(0.0, mean * size - (now - start))
                                                 for start, size in running)
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


def _launch(sweep, sweep_dir, launch: grouping.Launch):
  """Starts the launch's process; returns (process, its open log file)."""
  workdirs = [run_dir(sweep_dir, run) for run in launch.runs]
  for workdir in workdirs:
    os.makedirs(workdir, exist_ok=True)
  run = launch.runs[0]
  if 'branch_from' in run and not os.path.exists(os.path.join(workdirs[0], 'checkpoints')):
    _seed_branch(sweep_dir, run, workdirs[0])
  path = log_path(workdirs[0])
  if launch.is_group:
    path = group_log_path(sweep_dir, launch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    names = ', '.join(member['name'] for member in launch.runs)
    for workdir in workdirs:  # So a run's own log leads to its group's output.
      with open(log_path(workdir), 'a') as f:
        f.write(f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S} training in one program with '
                f'{names}; its output: {path}\n')
  log = open(path, 'a')
  process = subprocess.Popen(launch.command(sweep, workdirs), stdout=log,
                             stderr=subprocess.STDOUT)
  return process, log


def _record_process(sweep_dir, launch, pid: int) -> None:
  """jobs.json names the process training each run, for `status` and for other launchers."""
  jobs = read_jobs(sweep_dir)
  for run in launch.runs:
    jobs[run['name']] = {'launcher': 'local', 'pid': pid, 'host': socket.gethostname(),
                         'submitted': f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S}'}
  write_jobs(sweep_dir, jobs)


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
