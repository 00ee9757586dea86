"""`verify` end to end on the markov source: a micro sweep through the real trainer, its fit,
the compute-optimal run for a new budget, and the ledger row that scores it."""

import json
import os

import numpy as np
import pytest

from jaxscale.scaling import cli
from jaxscale.scaling.analysis import selection, verify
from jaxscale.scaling.laws import approach3
from jaxscale.scaling.runs import synthetic
from jaxscale.scaling.sweeps import launcher, sweep
from tests import test_scaling_end_to_end


@pytest.mark.slow
def test_verify_runs_a_micro_budget_and_writes_its_ledger_row(tmp_path, capsys):
  spec = test_scaling_end_to_end.micro_spec(tmp_path / 'tfds')
  spec.model_sizes = (3000.0, 12000.0)
  spec.tokens = (2560.0, 5120.0, 10240.0)
  out = tmp_path / 'sweep'
  planned = sweep.plan(spec)
  sweep.write(planned, out)
  assert len(planned['runs']) == 6
  assert not launcher.run_all(str(out), parallel=2)['failed']
  budget = 2 * max(run['C'] for run in planned['runs'])
  argv = ['verify', str(out), '--budget', str(budget), '--bootstrap', '20',
          '--fix', 'alpha=0.3', '--fix', 'beta=0.3']
  assert cli.main(argv) == 0, capsys.readouterr().err
  row = json.loads(capsys.readouterr().out)
  ledger = [json.loads(line) for line in (out / 'verify.jsonl').read_text().splitlines()]
  assert ledger == [row]
  assert row['budget'] == budget and row['actual_loss'] > 0 and row['predicted_loss'] > 0
  # Whether this one run lands inside is chance; coverage on a law with known noise is checked in
  # test_verify_intervals_cover_new_runs_of_a_law_with_known_noise.
  assert 0 < row['interval'][0] < row['interval'][1]
  assert row['inside'] == (row['interval'][0] <= row['actual_loss'] <= row['interval'][1])
  assert 0 < row['true_min_loss'] < row['actual_loss']
  assert row['fitted_E_minus_true'] == pytest.approx(row['fitted_E'] - row['true_min_loss'])
  assert os.path.exists(os.path.join(verify.work_dir(str(out), budget), 'config.py'))

  # Resumable: a second call trains nothing and scores the same run again.
  assert cli.main(argv) == 0
  again = json.loads(capsys.readouterr().out)
  assert again['actual_loss'] == row['actual_loss'] and again['run'] == row['run']
  assert len((out / 'verify.jsonl').read_text().splitlines()) == 2


def test_verify_intervals_cover_new_runs_of_a_law_with_known_noise():
  """verify's scoring of a fit on an IsoFLOP ladder drawn from a known law with 1% lognormal
  noise: new runs at the compute-optimal size for 2x and 4x the largest budget, drawn with the
  same noise, fall inside the stated 95% interval at least 85% of the time, and the interval is
  no wider than 10% of the loss each side."""
  truth = synthetic.HOFFMANN
  budgets = np.geomspace(1e17, 1e20, 7)
  runs = synthetic.isoflop_runs(budgets=budgets, sizes_per_budget=6, noise=0.01, seed=4)
  record = selection.fit(runs, num_bootstrap=0)
  rng = np.random.default_rng(5)
  inside, widths = [], []
  for budget in (2e20, 4e20):
    n_opt, d_opt = approach3.compute_optimal(record, budget)
    run = {'budget': budget, 'name': f'verify_{budget:g}', 'N': float(n_opt), 'D': float(d_opt),
           'C': budget}
    true_loss = float(approach3.loss(truth, n_opt, d_opt))
    for noise in rng.standard_normal(100):
      row = verify.score(record, run, {'eval_loss': true_loss * np.exp(0.01 * noise)})
      inside.append(row['inside'])
      widths.append((row['interval'][1] - row['interval'][0]) / 2 / row['predicted_loss'])
  assert np.mean(inside) >= 0.85, np.mean(inside)
  assert np.median(widths) <= 0.10, np.median(widths)
