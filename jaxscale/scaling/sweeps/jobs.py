"""A sweep's runs as scheduler jobs through submitit: SLURM, or submitit's local executor.

`submit` puts every run that is neither finished nor queued into one job array (one element per
launch: a solo run, or a multi program of K runs, `grouping`). Each element runs the launch's
trainer command as a subprocess of submitit's job process (`LaunchJob`), output appended to the
run's train.log (a group's: groups/<first run>.log) as with `--launcher local`; submitit's own
stdout/stderr for the element are linked beside it as runs/<name>/scheduler.out and
scheduler.err (the files themselves live under DIR/jobs/).

Preemption uses submitit's protocol: the scheduler (SLURM's `--signal`, or the local executor
near its time limit) sends USR2 to the job process, submitit calls `LaunchJob.checkpoint`, which
stops the trainer with SIGTERM (it saves a checkpoint at the next step and exits) and returns the
same job to be requeued; the requeued job runs the same command and the trainer resumes from its
workdir. The trainer saves on USR2 as well, for schedulers that signal every process.

DIR/jobs.json (`launcher.read_jobs`) records, per run, the job that trains it (launcher, job id, submitit folder), so
running the same command again submits only runs that are neither finished nor still queued or
running, and `status` reads each run's state from the scheduler and the workdirs.

A cooldown branch needs its trunk's checkpoint: it is submitted once its trunk has finished
(run the command again then); until then it is reported as waiting.
"""

import dataclasses
import datetime
import os
import shutil
import signal
import socket
import subprocess
import time

from jaxscale.scaling.sweeps import grouping, launcher, sweep as sweep_lib

SUBMITIT_LAUNCHERS = ('slurm', 'submitit-local')
STOP_TIMEOUT_S = 600  # How long a preempted trainer may take to save and exit.
POLL_SECONDS = 1.0


@dataclasses.dataclass
class SlurmOptions:
  """The scheduler's resources per array element (a run, or a multi program of runs)."""
  partition: str | None = None
  account: str | None = None
  time_min: int = 60
  gpus_per_node: int = 0
  nodes_per_run: int = 1
  cpus_per_task: int | None = None
  max_concurrent: int | None = None


def require_submitit(launcher_name: str):
  """submitit, or a one-line error saying how to get it (and, for slurm, sbatch)."""
  try:
    import submitit  # noqa: PLC0415  (an optional dependency: the slurm extra)
  except ImportError:
    raise ValueError(f'--launcher {launcher_name} needs submitit, which is not installed: '
                     "pip install 'jaxscale[slurm]' (or pip install submitit).") from None
  if launcher_name == 'slurm' and shutil.which('sbatch') is None:
    raise ValueError('--launcher slurm needs sbatch, which is not on PATH: run on a SLURM login '
                     'node, or try the same jobs on this machine with --launcher submitit-local.')
  return submitit


def executor(launcher_name: str, folder, options: SlurmOptions, name: str):
  """The submitit executor for the sweep's jobs, its resources set from `options`."""
  submitit = require_submitit(launcher_name)
  if launcher_name == 'submitit-local':
    if options.nodes_per_run > 1:
      raise ValueError(f'nodes_per_run={options.nodes_per_run}: the local executor runs one node; '
                       'use --launcher slurm, or test a multi-process run with JAX_COORDINATOR_'
                       'ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.')
    result = submitit.LocalExecutor(folder=folder)
    result.update_parameters(timeout_min=options.time_min, tasks_per_node=1,
                             gpus_per_node=options.gpus_per_node)
    return result
  result = submitit.SlurmExecutor(folder=folder)
  parameters = {'job_name': name, 'time': options.time_min, 'nodes': options.nodes_per_run,
                'ntasks_per_node': 1, 'signal_delay_s': 120}
  if options.gpus_per_node:
    parameters['gpus_per_node'] = options.gpus_per_node
  for key, value in (('partition', options.partition), ('account', options.account),
                     ('cpus_per_task', options.cpus_per_task),
                     ('array_parallelism', options.max_concurrent)):
    if value is not None:
      parameters[key] = value
  result.update_parameters(**parameters)
  return result


class LaunchJob:
  """One array element: the launch's trainer command as a subprocess; submitit's Checkpointable.

  Only the first task (process) of a multi-node element writes train.log; the others write
  train.log.<rank>. Each task's trainer joins the others through SLURM's environment
  (`jaxscale.main` calls jax.distributed.initialize when SLURM_NTASKS > 1).
  """

  def __init__(self, command: list[str], log: str):
    self.command, self.log = list(command), log
    self._process = None

  def __call__(self) -> int:
    import submitit  # noqa: PLC0415  (present wherever this job runs: it unpickled it)
    rank = submitit.JobEnvironment().global_rank
    log = self.log if rank == 0 else f'{self.log}.{rank}'
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, 'a') as out:
      out.write(f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S} job on {socket.gethostname()}: '
                f'{" ".join(self.command)}\n')
      out.flush()
      self._process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
      # Polled, not wait()ed: a blocking wait holds the Popen's lock, and submitit's signal
      # handler (checkpoint) runs in this thread and must wait for the same process.
      while (code := self._process.poll()) is None:
        time.sleep(POLL_SECONDS)
    if code != 0:
      raise RuntimeError(f'the trainer exited with status {code}; its log: {log}')
    return code

  def checkpoint(self):
    """submitit's preemption hook: the trainer saves and exits, then the same job requeues."""
    import submitit  # noqa: PLC0415
    process = self._process
    if process is not None and process.poll() is None:
      process.send_signal(signal.SIGTERM)  # The trainer checkpoints at its next step.
      try:
        process.wait(timeout=STOP_TIMEOUT_S)
      except subprocess.TimeoutExpired:
        process.kill()
    return submitit.helpers.DelayedSubmission(LaunchJob(self.command, self.log))

  def __getstate__(self):
    return {'command': self.command, 'log': self.log}

  def __setstate__(self, state):
    self.__init__(state['command'], state['log'])


def job_state(record: dict) -> str:
  """'queued', 'running' or 'ended' (finished, failed or cancelled) for a recorded job.

  On another machine than the one that started it, a local job reads as ended."""
  if record.get('host', socket.gethostname()) != socket.gethostname() and 'pid' in record:
    return 'ended'

  if record['launcher'] in ('local', 'submitit-local'):
    # A local run's trainer, or the local executor's controller: alive (not a zombie) while it runs.
    return 'running' if _process_alive(int(record['pid'])) else 'ended'
  import submitit  # noqa: PLC0415
  state = submitit.SlurmJob(record['folder'], record['job_id']).state
  if state in ('PENDING', 'REQUEUED', 'CONFIGURING', 'RESIZING', 'SUSPENDED', 'UNKNOWN'):
    return 'queued'  # UNKNOWN: sacct has not heard of it yet, as for a just-submitted job.
  if state in ('RUNNING', 'COMPLETING', 'STAGE_OUT'):
    return 'running'
  return 'ended'


def _process_alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False
  except OSError:  # No /proc (not Linux): whether a signal could be sent.
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True


def submit(sweep_dir, launcher_name: str, options: SlurmOptions, multi=None, max_models=None,
           stream=None) -> dict:
  """Submits, as one job array, every run neither finished nor queued; returns {submitted: [run
  names], job_ids: [...], queued: [...], finished: [...], waiting: [branches whose trunk has not
  finished]}. Nothing is submitted if the launcher cannot be used (a one-line ValueError)."""
  require_submitit(launcher_name)
  sweep = sweep_lib.load(sweep_dir)
  multi, max_models = grouping.options(sweep, multi, max_models)
  spec_nodes = sweep.get('spec', {}).get('nodes_per_run')
  if spec_nodes and options.nodes_per_run == 1:
    options = dataclasses.replace(options, nodes_per_run=int(spec_nodes))
  jobs = launcher.read_jobs(sweep_dir)
  finished, queued, todo = [], [], []
  for run in sweep['runs']:
    if launcher.is_finished(launcher.run_dir(sweep_dir, run)):
      finished.append(run['name'])
    elif run['name'] in jobs and job_state(jobs[run['name']]) != 'ended':
      queued.append(run['name'])
    else:
      todo.append(run)
  ready = launcher._ready(todo, sweep_dir)  # noqa: SLF001
  waiting = [run['name'] for run in todo if run not in ready]
  if options.nodes_per_run > 1:
    multi = False  # A multi-node run trains one model per program.
  launches = launcher._launches(sweep, sweep_dir, ready, multi, max_models)  # noqa: SLF001
  result = {'submitted': [], 'job_ids': [], 'queued': queued, 'finished': finished,
            'waiting': waiting}
  if not launches:
    return result
  folder = os.path.join(sweep_dir, 'jobs', '%j')
  runner = executor(launcher_name, folder, options, os.path.basename(sweep_dir.rstrip('/')))
  calls = [LaunchJob(*_prepare(sweep, sweep_dir, launch)) for launch in launches]
  with runner.batch():
    submitted = [runner.submit(call) for call in calls]
  for launch, job in zip(launches, submitted):
    record = {'launcher': launcher_name, 'job_id': str(job.job_id), 'folder': str(job.paths.folder),
              'submitted': f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S}'}
    if launcher_name == 'submitit-local':
      record['pid'] = job.job_id  # The local executor's job id is its controller's pid.
      record['host'] = socket.gethostname()
    for run in launch.runs:
      jobs[run['name']] = record
      _link_scheduler_logs(launcher.run_dir(sweep_dir, run), job)
      result['submitted'].append(run['name'])
    result['job_ids'].append(str(job.job_id))
  launcher.write_jobs(sweep_dir, jobs)
  if stream is not None:
    print(f'[sweep] submitted {len(result["submitted"])} runs as {len(submitted)} jobs '
          f'({launcher_name}); `python -m jaxscale.scaling status {sweep_dir}` follows them',
          file=stream, flush=True)
  return result


def _prepare(sweep, sweep_dir, launch):
  """(command, log) for a launch: its workdirs made, a branch seeded, a group's logs linked."""
  workdirs = [launcher.run_dir(sweep_dir, run) for run in launch.runs]
  for workdir in workdirs:
    os.makedirs(workdir, exist_ok=True)
  run = launch.runs[0]
  if 'branch_from' in run and not os.path.exists(os.path.join(workdirs[0], 'checkpoints')):
    launcher._seed_branch(sweep_dir, run, workdirs[0])  # noqa: SLF001
  log = launcher.log_path(workdirs[0])
  if launch.is_group:
    log = launcher.group_log_path(sweep_dir, launch)
    names = ', '.join(member['name'] for member in launch.runs)
    for workdir in workdirs:  # So a run's own log leads to its group's output.
      with open(launcher.log_path(workdir), 'a') as f:
        f.write(f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S} training in one program with '
                f'{names}; its output: {log}\n')
  return launch.command(sweep, workdirs), log


def _link_scheduler_logs(workdir, job) -> None:
  """runs/<name>/scheduler.{out,err}: links to submitit's stdout/stderr of the run's job."""
  for name, target in (('scheduler.out', job.paths.stdout), ('scheduler.err', job.paths.stderr)):
    link = os.path.join(workdir, name)
    if os.path.lexists(link):
      os.remove(link)
    os.symlink(str(target), link)


def run_state(sweep_dir, run, jobs: dict) -> dict:
  """{name, state, ...}: 'finished' (summary.json says so), 'queued' or 'running' (its recorded
  job or process), 'failed' (its job ended unfinished; with the end of its log), else 'planned'."""
  workdir = launcher.run_dir(sweep_dir, run)
  entry = {'name': run['name']}
  record = jobs.get(run['name'])
  if record:
    entry['launcher'] = record['launcher']
    entry['job'] = record.get('job_id') or record.get('pid')
  if launcher.is_finished(workdir):
    return {**entry, 'state': 'finished'}
  if record and (state := job_state(record)) != 'ended':
    return {**entry, 'state': state}
  log = launcher.log_path(workdir)
  if record or os.path.exists(log):
    return {**entry, 'state': 'failed', 'log': log,
            'log_tail': [line.rstrip('\n') for line in launcher._last_lines(  # noqa: SLF001
                log, launcher.LOG_TAIL_LINES)]}
  return {**entry, 'state': 'planned'}


STATES = ('planned', 'queued', 'running', 'finished', 'failed')


def status(sweep_dir) -> dict:
  """Each run's state (`run_state`) and the sweep's counts per state."""
  sweep = sweep_lib.load(sweep_dir)
  jobs = launcher.read_jobs(sweep_dir)
  runs = [run_state(sweep_dir, run, jobs) for run in sweep['runs']]
  counts = {state: sum(run['state'] == state for run in runs) for state in STATES}
  return {'dir': str(sweep_dir), 'total': len(runs), 'counts': counts, 'runs': runs}


def wait(sweep_dir, names: list[str], poll_seconds: float = 2.0) -> dict:
  """Waits until no run in `names` is queued or running; {finished, failed} run names."""
  sweep = sweep_lib.load(sweep_dir)
  runs = [run for run in sweep['runs'] if run['name'] in set(names)]
  while True:
    jobs = launcher.read_jobs(sweep_dir)
    states = {run['name']: run_state(sweep_dir, run, jobs)['state'] for run in runs}
    if not any(state in ('queued', 'running') for state in states.values()):
      return {'finished': [name for name, state in states.items() if state == 'finished'],
              'failed': [name for name, state in states.items() if state != 'finished']}
    time.sleep(poll_seconds)
