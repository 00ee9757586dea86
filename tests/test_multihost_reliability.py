"""Two CPU processes on localhost agree: a SIGTERM to one stops both at the same step, and a
restore whose reads fail for a while on one process resumes both from the same step."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from jaxscale.metrics import writers
from tests.test_multihost import OVERRIDES, _free_port

LONG_RUN = {**OVERRIDES, 'num_train_steps': 100000, 'log_every_steps': 1,
            'eval_every_steps': 100000, 'checkpoint_every_steps': 2, 'keep_checkpoints': 2}


def _start_two_processes(workdir, data_dir, log_dir, overrides, module='jaxscale.main',
                         extra_env=None, tag='run'):
  """Both processes of a 2-process run (4 CPU devices each), with their log paths."""
  port = _free_port()
  command = [sys.executable, '-m', module, '--config', 'configs/default.py',
             '--workdir', str(workdir), f'--config.dataset.data_dir={data_dir}'] + [
                 f'--config.{k}={v}' for k, v in overrides.items()]
  started = []
  for index in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(index), XLA_FLAGS='--xla_force_host_platform_device_count=4',
               **(extra_env or {}).get(index, {}))
    log = log_dir / f'{tag}_process_{index}.log'
    with log.open('w') as log_file:
      started.append((subprocess.Popen(command, env=env, stdout=log_file,
                                       stderr=subprocess.STDOUT), log))
  return started


def _wait_all(started, timeout=300):
  """The logs, after asserting each process exited 0 in time (killing it otherwise)."""
  deadline = time.time() + timeout
  for process, log in started:
    try:
      process.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
      pytest.fail(f'{log.name} still running after {timeout} s:\n{log.read_text()[-3000:]}')
    assert process.returncode == 0, log.read_text()[-4000:]
  return [log.read_text() for _, log in started]


def _rows(workdir):
  path = workdir / 'metrics.jsonl'
  return writers.read_jsonl(path) if path.exists() else []


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_a_flaky_read_still_resumes_both(
    tmp_path):
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'run'
  started = _start_two_processes(workdir, data_dir, tmp_path, LONG_RUN, tag='first')
  deadline = time.time() + 240
  while time.time() < deadline and all(p.poll() is None for p, _ in started) and not any(
      r.get('step', 0) >= 5 for r in _rows(workdir)):
    time.sleep(0.2)
  started[1][0].send_signal(signal.SIGTERM)  # The second host only.
  logs = _wait_all(started, timeout=120)

  stops = [re.findall(r'saved a checkpoint at step (\d+) and stopping', log) for log in logs]
  assert all(len(s) == 1 for s in stops), [log[-2000:] for log in logs]
  stop_step = int(stops[0][0])
  assert int(stops[1][0]) == stop_step and 5 <= stop_step < 100000
  checkpoints = workdir / 'checkpoints'
  saved = sorted(int(p.name) for p in checkpoints.iterdir())
  assert len(saved) == 2 and saved[-1] == stop_step
  assert {p.name for p in (workdir / 'checkpoints' / str(stop_step) / 'data').glob('process_*')} \
      == {'process_0-of-2.json', 'process_1-of-2.json'}

  # The restart's first two reads of the train state fail on the second process (a network file
  # system hiccup): retried there, and both processes resume from the newest step.
  finish = {**LONG_RUN, 'num_train_steps': stop_step + 1, 'allow_config_change': True}
  logs = _wait_all(_start_two_processes(workdir, data_dir, tmp_path, finish,
                                        module='tests.flaky_read_main', tag='resume',
                                        extra_env={1: {'FLAKY_READS': '2'}}))
  assert 'retrying (3 of 3)' in logs[1]
  for log in logs:
    assert f'Resumed from checkpoint at step {stop_step}.' in log, log[-3000:]
  assert not list(checkpoints.glob('*.corrupt*'))
  assert max(r['step'] for r in _rows(workdir)) == stop_step + 1

