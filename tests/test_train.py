"""End-to-end training through the real stack: data -> model -> sharded step -> Orbax -> writers."""

import json
import math
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxscale.metrics import writers
from jaxscale.train import loop
from tests.helpers import markov_config, straight_and_resumed, tiny_config


def _markov_config(data_dir, **overrides):
  return markov_config(data_dir, **{
      'batch_size': 16, 'dataset.seq_len': 64, 'model.d_model': 64, 'model.mlp_dim': 128,
      'optimizer.learning_rate': 1e-2, 'num_eval_batches': 2, **overrides})


def test_loss_falls_toward_the_known_entropy(data_dir, tmp_path):
  config = _markov_config(data_dir, num_train_steps=400, eval_every_steps=400,
                          log_every_steps=100, checkpoint_every_steps=400,
                          **{'optimizer.warmup_steps': 20})
  summary = loop.run(config, str(tmp_path))
  uniform = math.log(config.model.vocab_size or 32)
  min_loss = summary['dataset_min_loss']
  assert 0 < min_loss < uniform
  # The model can't beat the source's entropy, and closes most of the gap from uniform to it.
  assert summary['eval_loss'] > min_loss - 0.02
  assert (uniform - summary['eval_loss']) / (uniform - min_loss) > 0.75, summary


def test_every_eval_records_the_numbers_a_scaling_fit_needs(data_dir, tmp_path):
  loop.run(_markov_config(data_dir), str(tmp_path))
  rows = writers.read_jsonl(tmp_path / 'metrics.jsonl')
  eval_rows = [r for r in rows if 'eval_loss' in r]
  assert [r['step'] for r in eval_rows] == [10, 20]
  for row in eval_rows:
    for key in ('tokens_seen', 'flops_seen', 'params_total', 'params_non_embedding',
                'train_loss', 'eval_loss', 'eval_bits_per_token'):
      assert key in row and math.isfinite(row[key]), key
  assert eval_rows[1]['tokens_seen'] == 20 * 16 * 64
  assert eval_rows[1]['flops_seen'] == pytest.approx(2 * eval_rows[0]['flops_seen'])
  recorded = json.loads((tmp_path / 'config.json').read_text())
  assert recorded['model']['vocab_size'] == 32  # Filled in from the dataset.
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['finished'] and summary['step'] == 20


def test_resume_after_interruption_equals_an_uninterrupted_run(data_dir, tmp_path, monkeypatch):
  config = _markov_config(data_dir)
  straight, resumed = straight_and_resumed(config, tmp_path, monkeypatch, interrupt_after=10)

  assert resumed['eval_loss'] == straight['eval_loss']
  rows = {name: {r['step']: r for r in writers.read_jsonl(tmp_path / name / 'metrics.jsonl')
                 if 'eval_loss' not in r and 'train_loss' in r}
          for name in ('straight', 'resumed')}
  for step in (15, 20):  # Steps trained after the restart saw the same batches and state.
    assert rows['resumed'][step]['train_loss'] == rows['straight'][step]['train_loss']
  checkpointer = ocp.StandardCheckpointer()
  final = {name: checkpointer.restore(tmp_path / name / 'checkpoints' / '20' / 'state')
           for name in ('straight', 'resumed')}
  for part in ('params', 'opt_state', 'model_state', 'step', 'skipped_updates'):
    expected = jax.tree.leaves(final['straight'][part])
    actual = jax.tree.leaves(final['resumed'][part])
    assert len(expected) == len(actual)
    assert all(np.array_equal(a, b) for a, b in zip(expected, actual)), part


def test_workdir_with_a_different_config_is_refused(data_dir, tmp_path):
  loop.run(_markov_config(data_dir, num_train_steps=10), str(tmp_path))
  with pytest.raises(ValueError, match=r'config.model.d_model: 64 -> 32'):
    loop.run(_markov_config(data_dir, num_train_steps=10, **{'model.d_model': 32}), str(tmp_path))


def _tiny_cli_command(tmp_path, **schedule):
  """`python -m jaxscale.main` on the default config shrunk to a 1-layer model, in tmp_path/run."""
  overrides = dict(num_eval_batches=1, batch_size=8, **schedule)
  overrides.update({'dataset.seq_len': 32, 'model.num_layers': 1, 'model.d_model': 32,
                    'model.mlp_dim': 64, 'optimizer.warmup_steps': 1,
                    'dataset.data_dir': tmp_path / 'tfds'})
  return [sys.executable, '-m', 'jaxscale.main', '--config', 'configs/default.py',
          '--workdir', str(tmp_path / 'run')] + [f'--config.{k}={v}' for k, v in overrides.items()]


def test_cli_trains_writes_the_workdir_and_resumes(tmp_path):
  workdir = tmp_path / 'run'
  command = _tiny_cli_command(tmp_path, num_train_steps=6, eval_every_steps=3,
                              log_every_steps=3, checkpoint_every_steps=3)
  first = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'eval loss' in first.stderr and 'tokens/s' in first.stderr
  for name in ('config.json', 'metrics.jsonl', 'summary.json'):
    assert (workdir / name).exists(), name
  assert list(workdir.glob('events.out.tfevents.*'))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['3', '6']
  summary = json.loads((workdir / 'summary.json').read_text())
  assert 'eval_bits_per_byte' in writers.read_jsonl(workdir / 'metrics.jsonl')[-1]

  second = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resumed from checkpoint at step 6' in second.stderr
  assert json.loads((workdir / 'summary.json').read_text())['eval_loss'] == pytest.approx(
      summary['eval_loss'], rel=1e-6)


def test_sigterm_checkpoints_at_the_next_step_and_a_restart_finishes(tmp_path):
  workdir = tmp_path / 'run'
  command = _tiny_cli_command(tmp_path, num_train_steps=100000, log_every_steps=2,
                              checkpoint_every_steps=100000, eval_every_steps=100000)
  process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not any(
      r.get('step', 0) >= 4 for r in _rows_if_any(workdir / 'metrics.jsonl')):
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  assert 'Preemption notice' in stderr
  saved = [int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and 4 <= saved[0] < 100000
  assert not (workdir / 'summary.json').exists()  # Not finished: sweeps will relaunch it.

  finish = [arg if not arg.startswith('--config.num_train_steps') else
            f'--config.num_train_steps={saved[0] + 2}' for arg in command]
  result = subprocess.run(finish + ['--config.allow_config_change=True'], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from checkpoint at step {saved[0]}' in result.stderr
  assert json.loads((workdir / 'summary.json').read_text())['step'] == saved[0] + 2


def _rows_if_any(path):
  return writers.read_jsonl(path) if path.exists() else []


def test_lm1b_trains_through_its_real_loading_path_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # noqa: PLC0415
  config = tiny_config(**{'dataset.name': 'lm1b', 'dataset.data_dir': str(tmp_path / 'tfds'),
                          'model.vocab_size': 0, 'num_train_steps': 10})
  with tfds.testing.mock_data(num_examples=64):
    summary = loop.run(config, str(tmp_path / 'run'))
  assert summary['finished'] and math.isfinite(summary['eval_loss'])
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['model']['vocab_size'] == 256
