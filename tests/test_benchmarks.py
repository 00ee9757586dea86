"""benchmarks/transfer.py runs end to end at a tiny budget and prints well-formed JSON rows."""

import json
import os
import pathlib
import runpy
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
ROW_FIELDS = {'task', 'mode', 'init', 'train_fraction', 'augment', 'seed', 'accuracy',
              'macro_f1', 'params_trainable', 'checkpoint_bytes', 'steps_per_sec', 'wall_s'}


def _transfer(out, *args, task='text') -> list[dict]:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device.
  result = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'transfer.py'), f'--tasks={task}',
       '--pretrain_steps=2', f'--out={out}', *args],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.strip().splitlines()]


def test_transfer_benchmark_prints_a_row_per_run_and_seed_and_the_stats_over_seeds(tmp_path):
  lines = _transfer(tmp_path, '--fractions=0.1', '--steps=2', '--seeds=2', '--modes=full,frozen',
                    '--noaugment', task='image')
  rows = [line for line in lines if 'mode' in line]
  runs = sorted((r['mode'], r['init'], r.get('seed')) for r in rows)
  assert runs == [('frozen', 'pretrained', 0), ('frozen', 'pretrained', 1),
                  ('full', 'pretrained', 0), ('full', 'pretrained', 1), ('full', 'scratch', 0),
                  ('full', 'scratch', 1), ('pretrain', 'scratch', None)]
  (pretrain,) = [r for r in rows if r['mode'] == 'pretrain']
  assert pretrain['reused'] is False and len(pretrain['fingerprint']) == 64
  finetunes = [r for r in rows if r['mode'] != 'pretrain']
  for row in finetunes:
    assert ROW_FIELDS <= set(row), row
    assert row['task'] == 'image' and 0 <= row['macro_f1'] <= 1 and row['checkpoint_bytes'] > 0
    workdir = tmp_path / 'image' / f'{row["mode"]}_{row["init"]}_f0.1_s{row["seed"]}'
    assert (workdir / 'summary.json').exists()  # Each run and seed has its own workdir,
    assert (workdir / 'init_report.json').exists() == (row['init'] == 'pretrained')  # its init.
  full = next(r for r in finetunes if r['mode'] == 'full' and r['init'] == 'pretrained')
  frozen = next(r for r in finetunes if r['mode'] == 'frozen')
  assert frozen['params_trainable'] < full['params_trainable']

  summary = lines[-1]
  assert summary['summary'] == 'pretrained_minus_scratch' and summary['seeds'] == [0, 1]
  f1 = {(r['init'], r['seed']): r['macro_f1'] for r in finetunes if r['mode'] == 'full'}
  gap = summary['image']['0.1']
  diffs = [f1['pretrained', s] - f1['scratch', s] for s in (0, 1)]
  assert gap['macro_f1_n'] == 2
  assert gap['macro_f1_mean'] == pytest.approx(sum(diffs) / 2, abs=1e-4)
  assert gap['macro_f1_std'] == pytest.approx(abs(diffs[0] - diffs[1]) / 2 ** 0.5, abs=1e-4)
  stats = {(s['mode'], s['init']): s for s in summary['runs']}
  assert set(stats) == {('full', 'pretrained'), ('full', 'scratch'), ('frozen', 'pretrained')}
  scratch = stats['full', 'scratch']
  assert scratch['seeds'] == [0, 1] and scratch['macro_f1_mean'] == pytest.approx(
      (f1['scratch', 0] + f1['scratch', 1]) / 2, abs=1e-4)
  assert summary['cpu_s'] > 0 and summary['wall_s'] > 0


def test_transfer_benchmark_reuses_a_pretrain_only_with_a_matching_fingerprint(tmp_path):
  lines = _transfer(tmp_path, '--modes=')
  (first,) = [r for r in lines if r.get('mode') == 'pretrain']
  # The text task trains its tokenizer first, and its runs read it.
  (tokenizer,) = [r for r in lines if 'tokenizer' in r]
  assert tokenizer['tokenizer'] == str(tmp_path / 'text' / 'tokenizer')
  assert tokenizer['vocab_size'] == 4096 and tokenizer['dataset'] == 'python_stdlib'
  config = json.loads((tmp_path / 'text' / 'lm_pretrain' / 'config.json').read_text())
  assert config['dataset']['tokenizer'] == f'hf:{tmp_path / "text" / "tokenizer"}'
  (again,) = [r for r in _transfer(tmp_path, '--modes=') if r.get('mode') == 'pretrain']
  assert first['reused'] is False and again['reused'] is True  # The same tokenizer, retrained.
  assert again['fingerprint'] == first['fingerprint']
  # A pretrain left by older code (or another config) carries another fingerprint: redone.
  workdir = tmp_path / 'text' / 'lm_pretrain'  # A transformer: quicker to compile than a ResNet.
  (workdir / 'pretrain_fingerprint.txt').write_text('0' * 64 + '\n')
  (redone,) = [r for r in _transfer(tmp_path, '--modes=') if r.get('mode') == 'pretrain']
  assert redone['reused'] is False and redone['fingerprint'] == first['fingerprint']
  assert (workdir / 'pretrain_fingerprint.txt').read_text().strip() == first['fingerprint']


COMPRESSION_FIELDS = {'task', 'row', 'params', 'bytes', 'eval_accuracy', 'latency_s', 'wall_s'}


@pytest.mark.slow
def test_data_state_benchmark_reports_a_grain_item_of_a_few_bytes():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device.
  result = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'data_state.py'), '--loaders=grain',
       '--steps=2', '--batch_size=8', '--train_examples=64', '--eval_examples=16',
       '--source_side=64'],
      capture_output=True, text=True, timeout=600, env=env, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  (row,) = json.loads(result.stdout)['runs']
  assert row['loader'] == 'grain' and row['code'] == 'after'
  assert row['shuffle_buffer_size'] == 16_384 and row['image_size'] == 224
  assert 0 < row['data_item_bytes_per_checkpoint']['2'] < 1024
  assert row['peak_rss_bytes'] > 0


@pytest.mark.slow
def test_data_state_benchmark_on_text_the_grain_item_does_not_hold_the_buffers():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device.
  result = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'data_state.py'), '--config=configs/default.py',
       '--loaders=tfdata,grain', '--steps=2', '--batch_size=8', '--shuffle_buffer_size=512'],
      capture_output=True, text=True, timeout=600, env=env, check=False, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  tfdata, grain = json.loads(result.stdout)['runs']
  assert (tfdata['loader'], grain['loader']) == ('tfdata', 'grain')
  assert tfdata['shuffle_buffer_size'] == grain['shuffle_buffer_size'] == 512
  # tf.data's item holds 512 windows of 257 int32 tokens at least; Grain's a few integers.
  assert tfdata['data_item_bytes_per_checkpoint']['2'] > 512 * 257 * 4
  assert 0 < grain['data_item_bytes_per_checkpoint']['2'] < 1024


@pytest.mark.slow
def test_compression_benchmark_prints_a_row_per_compression_and_a_plot(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device.
  png = tmp_path / 'compression.png'
  result = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'compression.py'), '--tasks=digits',
       '--rows=baseline,ptq,qat,distill,prune', '--steps=4', '--sparsities=0.5',
       f'--out={tmp_path}', f'--png={png}'],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {r['row']: r for r in map(json.loads, result.stdout.strip().splitlines())}
  assert {'baseline', 'ptq_w8a8', 'ptq_w8', 'ptq_w4', 'qat_w8a8', 'distill', 'prune_50'} <= set(rows)
  # This checkout has every compression's config keys: a skipped row is a failure.
  assert not [row for row in rows.values() if 'skipped' in row], rows
  for row in rows.values():
    assert COMPRESSION_FIELDS <= set(row), row
    assert row['task'] == 'digits' and 0 <= row['eval_accuracy'] <= 1 and row['latency_s'] > 0
  baseline = rows['baseline']
  assert baseline['bytes'] == 4 * baseline['params']
  assert rows['ptq_w4']['bytes'] < rows['ptq_w8']['bytes'] <= 0.3 * baseline['bytes']
  assert rows['qat_w8a8']['bytes'] == rows['ptq_w8a8']['bytes']
  assert png.stat().st_size > 0


def test_compression_benchmark_skips_a_missing_config_key_only():
  module = runpy.run_path(str(ROOT / 'benchmarks' / 'compression_tradeoff.py'),
                          run_name='compression_tradeoff')

  def missing_key():
    module['load_config']('mlp_digits', {'distill.no_such_key': 1.0})

  def bug():
    return [{}['eval_accuracy']]  # A KeyError inside a compression's own code.

  [row] = module['attempt_rows']('digits', 'distill', missing_key)
  assert row['row'] == 'distill' and 'no_such_key' in row['skipped']
  with pytest.raises(KeyError):
    module['attempt_rows']('digits', 'distill', bug)


def test_input_pipeline_benchmark_relates_pipeline_to_step_rate():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device.
  result = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'input_pipeline.py'),
       '--config=configs/bench_small.py', '--batches=5', '--steps=2',
       '--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
       '--config.model.mlp_dim=64'],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads(result.stdout.strip().splitlines()[-1])
  assert row['dataset'] == 'python_stdlib' and row['batch_size'] == 16
  assert row['pipeline_batches_per_s'] > 0 and row['train_steps_per_s'] > 0
  assert row['headroom'] == pytest.approx(row['pipeline_batches_per_s'] / row['train_steps_per_s'])


@pytest.mark.slow
def test_hf_benchmarks_print_conversion_memory_and_generation_speed_rows():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One CPU device.
  result = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'hf_convert.py'),
                           '--size', 'tiny'], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads(result.stdout.strip().splitlines()[-1])
  assert row['checkpoint_bytes'] > 0
  for direction in ('from_hf', 'to_hf'):
    assert row[direction]['seconds'] > 0
    assert row[direction]['peak_rss_bytes'] >= row[direction]['rss_before_bytes'] > 0
  result = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'hf_generate.py'),
                           '--size', 'tiny', '--new_tokens', '4', '--batches', '1,2'],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(result.stdout.strip().splitlines()[-1])['rows']
  assert [r['batch'] for r in rows] == [1, 2]
  for r in rows:  # The same weights and prompts: greedy tokens agree.
    assert r['tokens_equal_fraction'] == 1.0 and r['jaxscale_tokens_per_s'] > 0
    assert r['speedup'] == pytest.approx(
        r['jaxscale_tokens_per_s'] / r['transformers_tokens_per_s'], rel=0.05)
