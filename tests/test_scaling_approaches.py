"""Approaches 1 and 2, Kaplan laws, predictions, compare and validate, on runs drawn from a known
law (synthetic.HOFFMANN: a = beta / (alpha + beta) = 0.4516)."""

import numpy as np
import pytest

from jaxscale.scaling.analysis import compare, predict, validate
from jaxscale.scaling.laws import approach1, approach2, approach3, envelope, fits, kaplan
from jaxscale.scaling.runs import synthetic, table

TRUTH = synthetic.HOFFMANN
TRUE_A = TRUTH['beta'] / (TRUTH['alpha'] + TRUTH['beta'])


@pytest.fixture(scope='module')
def isoflop():
  return synthetic.isoflop_runs(noise=0.002, seed=3)


@pytest.fixture(scope='module')
def approach2_fit(isoflop):
  return approach2.fit(isoflop, num_bootstrap=100)


def test_approach2_recovers_allocation_exponents(approach2_fit):
  assert approach2_fit['a'] == pytest.approx(TRUE_A, abs=0.01)
  assert approach2_fit['b'] == pytest.approx(1 - TRUE_A, abs=0.01)
  assert approach2_fit['num_budgets'] == 4
  low, high = approach2_fit['ci']['a']
  assert low < approach2_fit['a'] < high


def test_approach2_minima_are_the_true_optima(approach2_fit):
  for minimum in approach2_fit['minima']:
    n_opt, d_opt = approach3.compute_optimal(TRUTH, minimum['C'])
    assert minimum['N'] == pytest.approx(n_opt, rel=0.15)
    assert minimum['D'] == pytest.approx(d_opt, rel=0.15)


def test_approach2_groups_budgets_by_compute_without_a_budget_column(isoflop):
  runs = {name: values for name, values in isoflop.items() if name != 'budget'}
  runs['C'] = runs['C'] * np.exp(np.random.default_rng(0).uniform(-0.02, 0.02, len(runs['C'])))
  assert approach2.budget_labels(runs).max() + 1 == 4
  assert approach2.fit(runs, num_bootstrap=0)['a'] == pytest.approx(TRUE_A, abs=0.015)


def test_approach2_refuses_a_curve_without_interior_minimum(isoflop):
  budget = 1e19
  n_opt = approach3.compute_optimal(TRUTH, budget)[0]
  too_large = (isoflop['budget'] != budget) | (isoflop['N'] > n_opt)
  with pytest.raises(ValueError, match=r'budget 1e\+19 .*no interior minimum'):
    approach2.fit(table.subset(isoflop, too_large), num_bootstrap=0)


def test_approach2_refuses_a_curve_with_too_few_points(isoflop):
  n_opt = approach3.compute_optimal(TRUTH, 1e20)[0]
  keep = (isoflop['budget'] != 1e20) | ((isoflop['N'] < n_opt * 2) & (isoflop['N'] > n_opt / 2))
  with pytest.raises(ValueError, match=r'budget 1e\+20 .*needs at least 3'):
    approach2.fit(table.subset(isoflop, keep), num_bootstrap=0)


def test_approach1_recovers_allocation_from_training_curves():
  # Each run's loss at points along training (as if tuned for each length), 16 model sizes.
  sizes = np.geomspace(1e7, 1e10, 16)
  tokens = np.geomspace(1e8, 1e12, 24)
  n, d = (grid.ravel() for grid in np.meshgrid(sizes, tokens))
  runs = {'N': n, 'D': d, 'loss': approach3.loss(TRUTH, n, d)}
  fitted = approach1.fit(runs, num_bootstrap=50)
  # The envelope of a lattice of sizes is a step function of C: a small bias remains.
  assert fitted['a'] == pytest.approx(TRUE_A, abs=0.03)
  assert fitted['frontier']['gamma'] > 0
  assert fitted['num_bootstrap'] > 40


def test_lower_envelope_keeps_only_improvements():
  compute = np.array([1, 2, 3, 4, 5, 5.0])
  loss = np.array([5, 6, 4, 4, 3, 2.0])
  assert envelope.lower_envelope(compute, loss).tolist() == [True, False, True, False, False, True]


def test_kaplan_fits_with_and_without_offset():
  runs = synthetic.grid_runs(noise=0.002, seed=4)
  with_offset = kaplan.fit(runs, num_bootstrap=20)
  without = kaplan.fit(runs, offset=False, num_bootstrap=0)
  assert without['L(N)']['E'] == 0.0
  for name in ('L(N)', 'L(D)', 'L(C)'):
    assert with_offset[name]['gamma'] > 0
    assert 0 < with_offset[name]['E'] < runs['loss'].min()
  assert with_offset['L(N)']['num_points'] == 8
  prediction = predict.at_size(with_offset, n=1e9)
  assert prediction['ci']['loss'][0] <= prediction['loss'] <= prediction['ci']['loss'][1]
  with pytest.raises(ValueError, match='not both'):
    predict.at_size(with_offset, n=1e9, d=1e10)


def test_predictions_carry_intervals(approach2_fit):
  runs = synthetic.grid_runs(noise=0.003, seed=5)
  parametric = fits.fit_runs(runs, approach=3, num_bootstrap=100)
  for record in (parametric, approach2_fit):
    result = predict.at_compute(record, 1e22)
    assert 6 * result['N_opt'] * result['D_opt'] == pytest.approx(1e22, rel=0.1)
    for name in ('N_opt', 'D_opt', 'loss'):
      low, high = result['ci'][name]
      assert low <= result[name] <= high, name
  point = predict.at_size(parametric, n=1e9, d=2e10)
  assert point['loss'] == pytest.approx(float(approach3.loss(TRUTH, 1e9, 2e10)), rel=0.01)
  with pytest.raises(ValueError, match='Approach 3'):
    predict.at_size(approach2_fit, n=1e9, d=2e10)


def test_compare_finds_a_known_compute_multiplier(isoflop):
  # The variant reaches each loss with a third of the compute: a 3x effective multiplier.
  variant = {'C': isoflop['C'] / 3, 'loss': isoflop['loss']}
  result = compare.compare(isoflop, variant, num_bootstrap=100)
  assert result['multiplier'] == pytest.approx(3.0, rel=0.05)
  low, high = result['ci']['multiplier']
  assert low < 3.0 < high and high - low < 1.5  # Covers the truth, and says something.


def test_validate_reports_errors_and_coverage(isoflop):
  report = validate.validate(isoflop, holdout_fraction=0.25, num_bootstrap=100)
  summary = report['summary']
  assert summary['num_held_out'] == 7  # The whole largest budget, never half of one.
  assert summary['held_out_min_C'] > summary['train_max_C']
  assert summary['mean_abs_relative_error'] < 0.01
  # Prediction intervals of a well-specified law hold most held-out runs; intervals on the
  # mean alone are narrower and hold fewer.
  assert summary['pi_coverage'] >= 5 / 7
  assert summary['ci_coverage'] <= summary['pi_coverage']
  assert summary['nominal_coverage'] == 0.95
  # Four budgets: too few backtest errors for a calibrated 95% interval, and it says so.
  assert 'uncalibrated' in summary['pi_method']
  row = report['held_out'][0]
  assert {'predicted', 'relative_error', 'ci', 'pi', 'inside_ci', 'inside_pi'} <= set(row)
  assert row['extrapolation_ratio'] > 1
  assert report['backtest']['num_origins'] == 2  # Fit on 2 budgets (then 3), predict the rest.
