"""Image classification through the real stack: digits -> MLP/ResNet -> sharded step -> writers."""

import json
import math
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxscale.checkpoint import checkpointing
from jaxscale.metrics import writers
from jaxscale.scaling.runs import collect
from jaxscale.train import loop
from tests.helpers import load_config_file


def _digits_run_config(name, data_dir, **overrides):
  return load_config_file(name, **{'dataset.data_dir': str(data_dir), **overrides})


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def test_mlp_reaches_95_percent_on_digits(data_dir, tmp_path):
  summary = loop.run(_digits_run_config('mlp_digits', data_dir), str(tmp_path))
  assert summary['finished']
  assert summary['eval_accuracy'] >= 0.95, summary
  assert summary['eval_top5_accuracy'] >= summary['eval_accuracy']
  rows = writers.read_jsonl(tmp_path / 'metrics.jsonl')
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
  summary = loop.run(config, str(tmp_path))
  assert summary['eval_accuracy'] >= 0.95, summary


def test_a_width_sweep_over_digits_is_collectable(data_dir, tmp_path):
  for width in (16, 64):
    config = _digits_run_config('mlp_digits', data_dir, num_train_steps=40, eval_every_steps=20,
                     checkpoint_every_steps=40, **{'model.hidden_dims': (width,)})
    loop.run(config, str(tmp_path / f'mlp_w{width}'))
  rows, unfinished = collect.collect(str(tmp_path))
  assert not unfinished and len(rows) == 2
  by_width = {row['run']: row for row in rows}
  narrow, wide = by_width['mlp_w16'], by_width['mlp_w64']
  assert narrow['N'] < wide['N'] and narrow['C'] < wide['C']
  assert narrow['D'] == wide['D'] == 40 * 64  # Images seen.
  assert all(math.isfinite(row['loss']) for row in rows)


def _data_item_bytes(workdir, step) -> int:
  item = workdir / 'checkpoints' / str(step) / 'data'
  return sum(f.stat().st_size for f in item.rglob('*') if f.is_file())


def _saved_params(workdir, step):
  return ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')['params']


_SHORT = {'num_train_steps': 6, 'log_every_steps': 3, 'eval_every_steps': 6,
          'checkpoint_every_steps': 3, 'optimizer.warmup_steps': 2, 'dataset.crop': 'pad_and_crop',
          'dataset.flip': True, 'dataset.mixup_alpha': 0.4}


def test_vision_run_resumed_from_a_checkpoint_matches_the_uninterrupted_one(data_dir, tmp_path):
  config = _digits_run_config('mlp_digits', data_dir, **_SHORT)
  straight = loop.run(config, str(tmp_path / 'straight'))
  workdir = tmp_path / 'resumed'
  loop.run(config, str(workdir))
  # As if stopped after the checkpoint of step 3: the resumed run reads batches 4-6 again.
  shutil.rmtree(workdir / 'checkpoints' / '6')
  (workdir / 'summary.json').unlink()
  resumed = loop.run(config, str(workdir))
  assert resumed['step'] == 6 and resumed['eval_loss'] == straight['eval_loss']
  jax.tree.map(np.testing.assert_array_equal, _saved_params(workdir, 6),
               _saved_params(tmp_path / 'straight', 6))
  # The data item is this process's batch count: a few bytes, whatever the shuffle.
  state = json.loads((workdir / 'checkpoints' / '3' / 'data' / 'process_0-of-1.json').read_text())
  assert state == {'next_index': 3}
  assert _data_item_bytes(workdir, 3) < 1024


def test_tfdata_checkpoints_hold_the_buffer_and_do_not_resume_under_grain(data_dir, tmp_path):
  config = _digits_run_config('mlp_digits', data_dir,
                              **{**_SHORT, 'dataset.loader': 'tfdata', 'num_train_steps': 3})
  loop.run(config, str(tmp_path))
  # The shuffle buffer of (encoded) digits images: what the index-based state avoids.
  assert _data_item_bytes(tmp_path, 3) > 1024
  config = _digits_run_config('mlp_digits', data_dir, **_SHORT, allow_config_change=True)
  with pytest.raises(checkpointing.LoaderMismatchError,
                     match="'tfdata' loader.*--config.dataset.loader=tfdata"):
    loop.run(config, str(tmp_path))
