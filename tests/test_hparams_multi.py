"""K models in one vmapped program train as K solo runs would."""

import json

import pytest

from jaxscale import metrics, train
from jaxscale.hparams import multi
from jaxscale.hparams import multi_loop
from tests.helpers import tiny_config

VALUES = {'learning_rate': [3e-3, 3e-2], 'seed': [0, 1]}


def config():
  return tiny_config(num_train_steps=6, log_every_steps=2, eval_every_steps=3,
                     checkpoint_every_steps=3, **{'dataset.name': 'markov'})


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multi')
  multi_dirs = [root / f'multi{k}' for k in range(2)]
  multi_loop.run(config(), [str(d) for d in multi_dirs], VALUES)
  solo_dirs = []
  for k, solo_config in enumerate(multi.model_configs(config(), VALUES)):
    solo_dirs.append(root / f'solo{k}')
    train.run(solo_config, solo_dirs[-1])
  return multi_dirs, solo_dirs


def test_each_vmapped_model_matches_its_solo_run(runs):
  multi_dirs, solo_dirs = runs
  compared = ('train_loss', 'learning_rate', 'grad_norm', 'param_norm', 'eval_loss')
  for multi_dir, solo_dir in zip(multi_dirs, solo_dirs):
    multi_rows = metrics.read_jsonl(multi_dir / 'metrics.jsonl')
    solo_rows = metrics.read_jsonl(solo_dir / 'metrics.jsonl')
    assert [(r['step'], sorted(r)) for r in multi_rows] == [(r['step'], sorted(r))
                                                            for r in solo_rows]
    for multi_row, solo_row in zip(multi_rows, solo_rows):
      for key in compared:
        if key in solo_row:
          assert multi_row[key] == pytest.approx(solo_row[key], rel=1e-4, abs=1e-6), (
              key, multi_row['step'])
    multi_summary = json.loads((multi_dir / 'summary.json').read_text())
    solo_summary = json.loads((solo_dir / 'summary.json').read_text())
    assert sorted(multi_summary) == sorted(solo_summary)
    assert multi_summary['eval_loss'] == pytest.approx(solo_summary['eval_loss'], rel=1e-4)
  # The models really differ: their own learning rates and seeds, not copies of one run.
  losses = [json.loads((d / 'summary.json').read_text())['eval_loss'] for d in multi_dirs]
  assert abs(losses[0] - losses[1]) > 1e-3


def test_multi_refuses_values_that_change_the_program():
  with pytest.raises(ValueError, match='varies only'):
    multi.model_configs(config(), {'batch_size': [8, 16]})
  with pytest.raises(ValueError, match='different lengths'):
    multi.model_configs(config(), {'learning_rate': [1e-3, 1e-2], 'seed': [0]})
