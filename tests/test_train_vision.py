"""Image classification through the real stack: digits -> MLP/ResNet -> sharded step -> writers."""

import json
import math

import pytest

from jaxscale import metrics, train
from jaxscale.scaling.runs import collect
from tests.helpers import load_config_file


def _digits_run_config(name, data_dir, **overrides):
  return load_config_file(name, **{'dataset.data_dir': str(data_dir), **overrides})


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def test_mlp_reaches_95_percent_on_digits(data_dir, tmp_path):
  summary = train.run(_digits_run_config('mlp_digits', data_dir), str(tmp_path))
  assert summary['finished']
  assert summary['eval_accuracy'] >= 0.95, summary
  assert summary['eval_top5_accuracy'] >= summary['eval_accuracy']
  rows = metrics.read_jsonl(tmp_path / 'metrics.jsonl')
  eval_rows = [r for r in rows if 'eval_loss' in r]
  # The numbers a scaling fit needs, as for language models (examples instead of tokens).
  for key in ('examples_seen', 'flops_seen', 'params_total', 'params_non_embedding',
              'train_loss', 'eval_loss', 'eval_accuracy'):
    assert math.isfinite(eval_rows[-1][key]), key
  assert 'tokens_seen' not in eval_rows[-1]
  assert eval_rows[-1]['examples_seen'] == 600 * 64
  # Against what cannot move with the machine's rounding: the untrained loss, ln 10. (Past its
  # best eval loss the MLP may overfit a little, so first-vs-last is no test.)
  untrained = math.log(10)
  assert min(r['eval_loss'] for r in eval_rows) < 0.1 * untrained, eval_rows
  assert eval_rows[-1]['eval_loss'] < 0.25 * untrained, eval_rows
  recorded = json.loads((tmp_path / 'config.json').read_text())
  assert recorded['model']['num_classes'] == 10 and recorded['model']['image_size'] == 8


@pytest.mark.slow
def test_small_resnet_reaches_95_percent_on_digits(data_dir, tmp_path):
  config = _digits_run_config('resnet_digits', data_dir, num_train_steps=200, eval_every_steps=200,
                   checkpoint_every_steps=200)
  summary = train.run(config, str(tmp_path))
  assert summary['eval_accuracy'] >= 0.95, summary


def test_a_width_sweep_over_digits_is_collectable(data_dir, tmp_path):
  for width in (16, 64):
    config = _digits_run_config('mlp_digits', data_dir, num_train_steps=40, eval_every_steps=20,
                     checkpoint_every_steps=40, **{'model.hidden_dims': (width,)})
    train.run(config, str(tmp_path / f'mlp_w{width}'))
  rows, unfinished = collect.collect(str(tmp_path))
  assert not unfinished and len(rows) == 2
  by_width = {row['run']: row for row in rows}
  narrow, wide = by_width['mlp_w16'], by_width['mlp_w64']
  assert narrow['N'] < wide['N'] and narrow['C'] < wide['C']
  assert narrow['D'] == wide['D'] == 40 * 64  # Images seen.
  assert all(math.isfinite(row['loss']) for row in rows)
