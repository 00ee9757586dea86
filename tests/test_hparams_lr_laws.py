"""Optimal learning-rate and batch-size power laws from finished runs, and their use by
`predict --emit-config`."""

import itertools
import json
import math

import pytest

from jaxscale.scaling import cli
from jaxscale.scaling.laws import lr_laws
from jaxscale.scaling.sweeps import run_config, sweep
from tests.test_scaling_sweep import tiny_spec

A, B_EXP, C_COEF, D_EXP = 0.5, -0.12, 2e-3, 0.3  # eta_opt = A C^B_EXP, B_opt = C_COEF C^D_EXP


def eta_opt(compute):
  return A * compute ** B_EXP


def batch_opt(compute):
  return C_COEF * compute ** D_EXP


def write_run(directory, compute, learning_rate, batch_size):
  loss = 2.0 + math.log(learning_rate / eta_opt(compute)) ** 2 + math.log(
      batch_size / batch_opt(compute)) ** 2
  directory.mkdir(parents=True)
  (directory / 'summary.json').write_text(json.dumps(
      {'finished': True, 'eval_loss': loss, 'flops_seen': compute}))
  (directory / 'config.json').write_text(json.dumps(
      {'optimizer': {'learning_rate': learning_rate}, 'batch_size': batch_size}))


@pytest.fixture
def runs_dir(tmp_path):
  for i, compute in enumerate((1e11, 1e12, 1e13, 1e14)):
    for j, (lr_factor, batch_factor) in enumerate(itertools.product((0.25, 0.5, 1, 2, 4),
                                                                    (0.5, 1, 2))):
      write_run(tmp_path / 'trials' / f'{i}_{j}', compute, eta_opt(compute) * lr_factor,
                batch_opt(compute) * batch_factor)
  (tmp_path / 'trials' / 'unfinished').mkdir()  # No summary.json: left out.
  return tmp_path


def test_laws_recover_the_optimal_learning_rate_and_batch_size(runs_dir, capsys):
  from jaxscale.hparams import __main__ as hparams_main
  assert hparams_main.main(['lr-laws', str(runs_dir)]) == 0
  record = json.loads((runs_dir / lr_laws.LAWS_FILE).read_text())
  assert [p['runs'] for p in record['budgets']] == [15] * 4
  assert record['laws']['learning_rate']['a'] == pytest.approx(A, rel=1e-3)
  assert record['laws']['learning_rate']['b'] == pytest.approx(B_EXP, abs=1e-4)
  assert record['laws']['batch_size']['c'] == pytest.approx(C_COEF, rel=1e-3)
  assert record['laws']['batch_size']['d'] == pytest.approx(D_EXP, abs=1e-4)
  assert json.loads(capsys.readouterr().out)['out'] == str(runs_dir / lr_laws.LAWS_FILE)


def test_too_few_budgets_is_an_error_naming_the_need(tmp_path):
  write_run(tmp_path / 'a', 1e11, 1e-2, 16)
  with pytest.raises(ValueError, match='at least 3'):
    lr_laws.fit_directory(tmp_path)


def test_emit_config_takes_learning_rate_and_batch_size_from_the_laws(tmp_path, capsys):
  sweep.write(sweep.plan(tiny_spec()), tmp_path / 'sweep')
  record = {'law': 'chinchilla', 'approach': 2, 'a': 0.5, 'b': 0.5, 'N_coef': 5e4 / 1e6,
            'D_coef': 1e12 ** 0.5 / 5e4 / 6, 'frontier': {'E': 1.1, 'k': 50.0, 'gamma': 0.1}}
  (tmp_path / 'fit.json').write_text(json.dumps(record))
  laws = {'learning_rate': {'a': A, 'b': B_EXP}, 'batch_size': {'c': 1.2e-2, 'd': 0.3}}
  (tmp_path / 'sweep' / lr_laws.LAWS_FILE).write_text(json.dumps({'laws': laws}))
  path = tmp_path / 'optimal.py'
  assert cli.main(['predict', '--fit', str(tmp_path / 'fit.json'), '--compute', '1e12',
                   '--emit-config', str(path), '--sweep', str(tmp_path / 'sweep')]) == 0
  emitted = json.loads(capsys.readouterr().out)
  config = run_config.load_config_file(str(path))
  assert config.optimizer.learning_rate == pytest.approx(eta_opt(1e12), rel=1e-3)
  assert config.batch_size == 64  # 1.2e-2 * 1e12^0.3 = 47.8, to the nearest power of two.
  # The steps spend the budget at the law's batch size.
  assert emitted['steps'] * 64 * config.dataset.seq_len == emitted['D']
  assert emitted['C'] == pytest.approx(1e12, rel=0.05)
