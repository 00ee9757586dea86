"""Sweeps through submitit (its local executor runs the slurm code path as real subprocess jobs),
the status command, preemption through submitit's protocol, and the launchers' input errors."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from jaxscale.metrics import writers
from jaxscale.scaling import cli
from jaxscale.scaling.sweeps import jobs, launcher, run_config, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_TIMEOUT_S = 420


def _spec(sizes, tokens, vary=(), overrides=()):
  spec = run_config.load_config_file(os.path.join(REPO, 'configs', 'sweeps', 'tiny_isoflop.py'))
  spec.base_config = os.path.join(REPO, 'configs', 'default.py')
  spec.update({'kind': 'grid', 'model_sizes': sizes, 'tokens': tokens, 'vary': vary,
               'evals_per_run': 2})
  spec.overrides = tuple(spec.overrides) + tuple(overrides)
  spec.cooldown = ml_collections.ConfigDict({'enabled': False, 'checkpoint_every_steps': 20})
  return spec


def _planned(path, spec):
  sweep.write(sweep.plan(spec), path)
  return str(path)


def _cli(*argv, timeout=JOB_TIMEOUT_S):
  result = subprocess.run([sys.executable, '-m', 'jaxscale.scaling', *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)
  return result


def _summaries(sweep_dir):
  runs = sweep.load(sweep_dir)['runs']
  return {run['name']: launcher.read_summary(launcher.run_dir(sweep_dir, run)) for run in runs}


@pytest.mark.slow
def test_submitit_local_sweep_equals_the_local_launcher_and_resubmits_nothing(tmp_path):
  # 4 runs: 2 sizes x 2 learning rates, so each size's 2 runs share one multi program: 2 jobs.
  spec = _spec((2e4, 4e4), (3e4,), vary=(('optimizer.learning_rate', (3e-3, 1e-2)),))
  via_jobs = _planned(tmp_path / 'jobs', spec)
  local = shutil.copytree(via_jobs, tmp_path / 'local')
  result = _cli('run', via_jobs, '--launcher', 'submitit-local', '--wait')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert len(report['finished']) == 4 and not report['failed']
  assert len(report['job_ids']) == 2  # One array element per multi program.
  result = _cli('run', str(local), '--parallel', '2')
  assert result.returncode == 0, result.stderr[-3000:]

  by_jobs, by_local = _summaries(via_jobs), _summaries(local)
  assert all(summary['finished'] for summary in by_jobs.values())
  for name, summary in by_jobs.items():
    assert summary['eval_loss'] == pytest.approx(by_local[name]['eval_loss'], rel=1e-6, abs=1e-6)
  # Each run's scheduler log sits beside its train.log, and names the job's own process.
  for run in sweep.load(via_jobs)['runs']:
    workdir = launcher.run_dir(via_jobs, run)
    assert os.path.islink(os.path.join(workdir, 'scheduler.out'))
    assert 'job' in open(os.path.join(workdir, 'scheduler.out')).read().lower()

  status = json.loads(_cli('status', via_jobs).stdout)
  assert status['counts'] == {'planned': 0, 'queued': 0, 'running': 0, 'finished': 4,
                              'failed': 0}
  again = _cli('run', via_jobs, '--launcher', 'submitit-local')
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads(again.stdout)['submitted'] == []  # All finished: nothing is submitted.


def test_status_reads_planned_failed_and_running_runs(tmp_path):
  sweep_dir = _planned(tmp_path / 'sweep', _spec((2e4, 4e4), (3e4,)))
  first, second = sweep.load(sweep_dir)['runs']
  failed_dir = launcher.run_dir(sweep_dir, first)
  with open(launcher.log_path(failed_dir), 'w') as f:
    f.write('step 1\nTraceback: ValueError: the loss is NaN\n')
  sleeper = subprocess.Popen(['sleep', '60'])
  try:
    launcher.write_jobs(sweep_dir, {
        first['name']: {'launcher': 'local', 'pid': 2 ** 22 + 1},  # No such process.
        second['name']: {'launcher': 'submitit-local', 'pid': sleeper.pid}})
    report = jobs.status(sweep_dir)
  finally:
    sleeper.kill()
    sleeper.wait()
  states = {run['name']: run for run in report['runs']}
  assert states[first['name']]['state'] == 'failed'
  assert states[first['name']]['log_tail'][-1] == 'Traceback: ValueError: the loss is NaN'
  assert states[second['name']]['state'] == 'running'
  assert report['counts'] == {'planned': 0, 'queued': 0, 'running': 1, 'finished': 0, 'failed': 1}
  os.remove(os.path.join(sweep_dir, launcher.JOBS_FILE))
  os.remove(launcher.log_path(failed_dir))
  assert jobs.status(sweep_dir)['counts']['planned'] == 2


def _children(pid: int) -> list[int]:
  found = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
            found.append(int(entry))
      except (OSError, IndexError):
        pass
  return found


def _by_step(workdir, key):
  """{step: value}: the last value logged for each step (a resumed run logs some steps again)."""
  return {row['step']: row[key] for row in writers.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if key in row}


@pytest.mark.slow
def test_job_preempted_through_submitits_protocol_is_requeued_and_resumes_bit_exact(tmp_path):
  spec = _spec((2e4,), (6e4,), overrides=('checkpoint_every_steps=5', 'log_every_steps=1',
                                          'eval_every_steps=20'))
  preempted = _planned(tmp_path / 'preempted', spec)
  straight = shutil.copytree(preempted, tmp_path / 'straight')
  (run,) = sweep.load(preempted)['runs']
  workdir = launcher.run_dir(preempted, run)
  assert cli.main(['run', preempted, '--launcher', 'submitit-local', '--no-multi']) == 0
  record = launcher.read_jobs(preempted)[run['name']]
  controller = int(record['pid'])

  deadline = time.monotonic() + JOB_TIMEOUT_S
  checkpoints = os.path.join(workdir, 'checkpoints')
  while not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
    assert time.monotonic() < deadline, 'the job wrote no checkpoint'
    assert jobs.job_state(record) == 'running', open(launcher.log_path(workdir)).read()[-3000:]
    time.sleep(0.5)
  (task,) = _children(controller)  # submitit's job process, which runs the trainer.
  os.kill(task, signal.SIGUSR2)  # What SLURM sends on preemption (submitit's --signal).
  while jobs.job_state(record) == 'running':
    assert time.monotonic() < deadline, 'the requeued job did not finish'
    time.sleep(1)

  assert launcher.is_finished(workdir), open(launcher.log_path(workdir)).read()[-3000:]
  scheduler_log = ''.join(open(os.path.join(workdir, f'scheduler.{kind}')).read()
                          for kind in ('out', 'err'))
  assert 'preempted' in scheduler_log and 'Requeued job' in scheduler_log, scheduler_log[-3000:]
  assert open(launcher.log_path(workdir)).read().count('job on ') == 2  # Started, requeued.
  summary = launcher.read_summary(workdir)
  assert cli.main(['run', str(straight), '--no-multi']) == 0
  straight_workdir = launcher.run_dir(straight, run)
  assert _by_step(workdir, 'train_loss') == _by_step(straight_workdir, 'train_loss')
  assert summary['eval_loss'] == launcher.read_summary(straight_workdir)['eval_loss']


def test_tpu_target_prints_launch_lines_that_launch_sh_accepts(tmp_path, capsys):
  sweep_dir = _planned(tmp_path / 'sweep', _spec((2e4, 4e4), (3e4,)))
  assert cli.main(['run', sweep_dir, '--launcher', 'print', '--target', 'tpu',
                   '--tpu-name', 'my-tpu', '--zone', 'us-central2-b']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and all(line.startswith('tpu/launch.sh ') for line in lines)
  env = {key: value for key, value in os.environ.items() if key not in ('TPU_NAME', 'ZONE')}
  for line, run in zip(lines, sweep.load(sweep_dir)['runs']):
    printed = subprocess.run(['bash', *shlex.split(line), '--dry-run'], capture_output=True,
                             text=True, cwd=REPO, env=env, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert 'gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all' in printed.stdout
    assert '--config=configs/default.py' in printed.stdout
    assert launcher.run_dir(sweep_dir, run) in printed.stdout
    assert 'model.d_model' in printed.stdout


def _error_lines(stderr: str) -> list[str]:
  assert 'Traceback' not in stderr, stderr
  return [line for line in stderr.splitlines() if line.startswith('error:')]


def _run_cli(argv, env=None, prelude='') -> subprocess.CompletedProcess:
  code = f'import sys\n{prelude}\nfrom jaxscale.scaling import cli\nsys.exit(cli.main({argv!r}))'
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=120)


def test_launcher_input_errors_are_one_line_and_submit_nothing(tmp_path):
  sweep_dir = _planned(tmp_path / 'sweep', _spec((2e4,), (3e4,)))
  no_sbatch = {**os.environ, 'PATH': str(tmp_path)}
  result = _run_cli(['run', sweep_dir, '--launcher', 'slurm'], env=no_sbatch)
  (error,) = _error_lines(result.stderr)
  assert result.returncode == 2 and 'sbatch' in error and 'submitit-local' in error

  missing = "sys.modules['submitit'] = None  # As if it were not installed."
  result = _run_cli(['run', sweep_dir, '--launcher', 'submitit-local'], prelude=missing)
  (error,) = _error_lines(result.stderr)
  assert result.returncode == 2 and 'pip install' in error and 'submitit' in error
  assert not os.path.exists(os.path.join(sweep_dir, launcher.JOBS_FILE))
  assert not os.path.exists(os.path.join(sweep_dir, 'jobs'))

  result = _run_cli(['run', sweep_dir, '--launcher', 'kubernetes'])
  assert result.returncode == 2 and "invalid choice: 'kubernetes'" in result.stderr


FAKE_SBATCH = '''#!/bin/sh
# Keeps the batch script submitit wrote, and answers as sbatch does.
cp "$(eval echo \\${$#})" "{script}"
echo "Submitted batch job 4242"
'''


def test_multi_node_runs_are_submitted_as_one_task_per_node_each_run_its_own_job(
    tmp_path, monkeypatch):
  sweep_dir = _planned(tmp_path / 'sweep', _spec((2e4, 4e4), (3e4,)))
  bin_dir, script = tmp_path / 'bin', tmp_path / 'submitted.sh'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(FAKE_SBATCH.replace('{script}', str(script)))
  (bin_dir / 'srun').write_text('#!/bin/sh\nexit 1\n')  # submitit only looks for it here.
  for tool in ('sbatch', 'srun'):
    (bin_dir / tool).chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  result = jobs.submit(sweep_dir, 'slurm', jobs.SlurmOptions(nodes_per_run=2, gpus_per_node=4),
                       multi=True)
  batch = script.read_text()
  # submitit's own sbatch script: two nodes, one task (one trainer process) on each, every task
  # started by srun so it gets SLURM's per-task environment that jax.distributed reads.
  lines = batch.splitlines()
  for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=1', '#SBATCH --gpus-per-node=4'):
    assert line in lines, batch
  assert any(line.startswith('#SBATCH --array=0-1') for line in lines), batch  # Two elements.
  assert any(line.startswith('srun ') and 'submitit.core._submit' in line for line in lines)
  # One model per job even though multi programs were asked for: a multi-node run trains one.
  assert len(result['submitted']) == 2 and result['job_ids'] == ['4242_0', '4242_1']


def test_every_task_of_a_multi_node_job_starts_the_trainer_in_slurms_environment(tmp_path,
                                                                               monkeypatch):
  for name, value in {'SUBMITIT_EXECUTOR': 'slurm', 'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '2',
                      'SLURM_PROCID': '1', 'SLURM_JOB_NUM_NODES': '2'}.items():
    monkeypatch.setenv(name, value)
  log = str(tmp_path / 'run' / 'train.log')
  # The trainer reads SLURM_NTASKS > 1 and joins the others through jax.distributed.
  show = 'import os; print("tasks", os.environ["SLURM_NTASKS"], "rank", os.environ["SLURM_PROCID"])'
  assert jobs.LaunchJob([sys.executable, '-c', show], log)() == 0
  assert not os.path.exists(log)  # Only the first task writes train.log...
  assert 'tasks 2 rank 1' in open(f'{log}.1').read()  # ...the others train.log.<rank>.
