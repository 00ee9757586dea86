"""A run SIGKILLed at arbitrary points and restarted ends bit-identical to an uninterrupted one."""

import re
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxscale.metrics import writers
from tests.test_train import _tiny_cli_command

NUM_STEPS = 16
NUM_KILLS = 3


def _command(tmp_path, workdir_name):
  command = _tiny_cli_command(tmp_path, num_train_steps=NUM_STEPS, log_every_steps=1,
                              eval_every_steps=4, checkpoint_every_steps=2)
  command[command.index('--workdir') + 1] = str(tmp_path / workdir_name)
  return command


def _rows(workdir):
  path = workdir / 'metrics.jsonl'
  return writers.read_jsonl(path) if path.exists() else []


def _final_state(workdir):
  return ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(NUM_STEPS) / 'state')


def _by_step(rows, key):
  """{step: value} for rows holding `key`, failing on a step logged twice."""
  values = {}
  for row in rows:
    if key in row:
      assert row['step'] not in values, f'step {row["step"]} has two {key} rows'
      values[row['step']] = row[key]
  return values


@pytest.mark.slow
def test_sigkill_at_random_points_then_restart_is_bit_exact(tmp_path):
  straight = subprocess.run(_command(tmp_path, 'straight'), capture_output=True, text=True,
                            timeout=300)
  assert straight.returncode == 0, straight.stderr[-3000:]

  workdir = tmp_path / 'killed'
  command = _command(tmp_path, 'killed')
  rng = np.random.default_rng(0)
  # Kill once each of these steps is logged (then after a random delay): a later step each time,
  # so restarts resume from committed checkpoints, not only from scratch.
  kill_after = sorted(int(k) for k in rng.choice(np.arange(3, NUM_STEPS - 1), NUM_KILLS,
                                                  replace=False))
  kills, partial_saves = 0, 0
  while kills < NUM_KILLS:
    log = tmp_path / f'attempt{kills}.log'
    with log.open('w') as log_file:
      process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    # Rows up to the previous target may be the previous process's (until the restart trims them).
    target = kill_after[kills]
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and not any(
        r['step'] >= target for r in _rows(workdir)):
      time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.5))  # Land anywhere: mid-step, mid-save, mid-eval.
    if process.poll() is not None:  # Finished (or failed) before the kill.
      assert process.returncode == 0, log.read_text()[-3000:]
      break
    process.send_signal(signal.SIGKILL)
    process.wait()
    kills += 1
    partial_saves += len(list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*')))
  assert kills == NUM_KILLS, f'the run finished after {kills} kills; make it longer'

  resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  logs = [(tmp_path / f'attempt{i}.log').read_text() for i in range(1, kills)] + [resumed.stderr]
  resumed_from = [int(m.group(1)) if (m := re.search(r'Resumed from checkpoint at step (\d+)', log))
                  else 0 for log in logs]
  print(f'{kills} kills after steps {kill_after} (+ up to 0.5 s); {partial_saves} left a '
        f'partially written checkpoint; restarts resumed from steps {resumed_from}')
  assert max(resumed_from) > 0

  # The data position was checkpointed, not replayed.
  assert not list((workdir / 'checkpoints').glob('*/data/*.replay'))
  expected, actual = _final_state(tmp_path / 'straight'), _final_state(workdir)
  assert set(expected) == {'step', 'params', 'model_state', 'opt_state', 'skipped_updates'}
  expected_leaves = jax.tree.leaves_with_path(expected)
  actual_leaves = jax.tree.leaves(actual)
  assert len(expected_leaves) == len(actual_leaves)
  for (path, a), b in zip(expected_leaves, actual_leaves):
    assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)

  straight_rows, killed_rows = _rows(tmp_path / 'straight'), _rows(workdir)
  for key in ('grad_norm', 'eval_loss'):  # One row per step, as if never interrupted.
    assert _by_step(killed_rows, key) == _by_step(straight_rows, key)
  train_rows = [r for r in killed_rows if 'grad_norm' in r]
  assert [r['train_loss'] for r in train_rows] == [
      r['train_loss'] for r in straight_rows if 'grad_norm' in r]
  assert len(train_rows) == NUM_STEPS
