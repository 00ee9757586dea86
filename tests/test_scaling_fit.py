"""Approach 3 fitting: reproduces the published refit, finds the true optimum, recovers known laws,
and refuses bad input loudly."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.optimize

from jaxscale.scaling.laws import approach3
from jaxscale.scaling.runs import data_files, synthetic
from jaxscale.scaling.solvers import lse_law, parametric_fit


@pytest.fixture(scope='module')
def chinchilla_runs():
  return data_files.chinchilla_fig4(drop_highest_loss=5)


@pytest.fixture(scope='module')
def chinchilla_fit(chinchilla_runs):
  return approach3.fit(chinchilla_runs, num_bootstrap=200, seed=0)


def test_packaged_data_is_the_epoch_extraction(chinchilla_runs):
  assert len(data_files.chinchilla_fig4()['loss']) == 245
  assert len(chinchilla_runs['loss']) == 240
  np.testing.assert_allclose(chinchilla_runs['C'], 6 * chinchilla_runs['N'] * chinchilla_runs['D'],
                             rtol=1e-4)


def test_reproduces_besiroglu_refit(chinchilla_fit):
  # Besiroglu et al. 2024, Table 1 refit of this file: E 1.82, alpha 0.3478, beta 0.3658, a 0.513.
  assert chinchilla_fit['E'] == pytest.approx(1.82, abs=0.01)
  assert chinchilla_fit['alpha'] == pytest.approx(0.348, abs=0.005)
  assert chinchilla_fit['beta'] == pytest.approx(0.366, abs=0.005)
  assert chinchilla_fit['a'] == pytest.approx(0.513, abs=0.005)
  assert chinchilla_fit['a'] + chinchilla_fit['b'] == pytest.approx(1.0)
  assert chinchilla_fit['num_points'] == 240


def test_bootstrap_intervals_bracket_the_fit_and_match_published_spread(chinchilla_fit):
  for name in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b'):
    low, high = chinchilla_fit['ci'][name]
    assert low < chinchilla_fit[name] < high, name
  # Published standard errors: ~0.02 for alpha, beta and a; a 95% interval is ~4 of them wide.
  width = lambda name: np.diff(chinchilla_fit['ci'][name])[0]
  assert 0.03 < width('alpha') < 0.15
  assert 0.03 < width('a') < 0.15
  assert len(chinchilla_fit['bootstrap']['alpha']) == chinchilla_fit['num_bootstrap'] == 200


def test_fast_optimum_is_a_float64_optimum(chinchilla_runs, chinchilla_fit):
  """Nothing a converged float64 L-BFGS-B finds from the fast answer, or from a sample of the
  grid's starts, beats it by more than 1e-9 relative."""
  log_x, log_y = parametric_fit.log_columns(approach3.SPEC, chinchilla_runs)
  fast_theta = approach3.SPEC.to_theta(chinchilla_fit)
  fast = lse_law.huber_objective(fast_theta, log_x, log_y)
  assert fast == pytest.approx(chinchilla_fit['objective'], rel=1e-12)
  polished = scipy.optimize.minimize(
      lse_law.huber_objective_and_grad, fast_theta, args=(log_x, log_y), jac=True,
      method='L-BFGS-B', options=dict(ftol=1e-15, gtol=1e-12, maxiter=10_000))
  assert polished.fun >= fast * (1 - 1e-9)
  starts = approach3.start_grid()[::150]
  for start in starts:
    result = scipy.optimize.minimize(lse_law.huber_objective_and_grad, start,
                                     args=(log_x, log_y), jac=True, method='L-BFGS-B')
    assert result.fun >= fast * (1 - 1e-9)


def test_recovers_a_known_law():
  truth = {'E': 1.9, 'A': 500.0, 'B': 1500.0, 'alpha': 0.36, 'beta': 0.31}
  runs = synthetic.grid_runs(truth, noise=0.003, seed=1)
  fitted = approach3.fit(runs, num_bootstrap=0)
  assert fitted['E'] == pytest.approx(truth['E'], abs=0.03)
  assert fitted['alpha'] == pytest.approx(truth['alpha'], abs=0.02)
  assert fitted['beta'] == pytest.approx(truth['beta'], abs=0.02)
  assert fitted['a'] == pytest.approx(truth['beta'] / (truth['alpha'] + truth['beta']), abs=0.01)
  assert math.log(fitted['A']) == pytest.approx(math.log(truth['A']), abs=0.3)


def test_fix_pins_the_asymptote():
  runs = synthetic.grid_runs(noise=0.003, seed=2)
  fitted = approach3.fit(runs, fixed={'E': 1.6}, num_bootstrap=20)
  assert fitted['E'] == 1.6
  assert fitted['fixed'] == {'E': 1.6}
  assert set(fitted['bootstrap']['E']) == {1.6}
  # The other parameters absorb the wrong asymptote, but the law still fits the data closely.
  relative = approach3.loss(fitted, runs['N'], runs['D']) / runs['loss'] - 1
  assert np.max(np.abs(relative)) < 0.05


def test_compute_optimal_allocation_is_the_constrained_minimum():
  params = synthetic.HOFFMANN
  n_opt, d_opt = approach3.compute_optimal(params, 1e21)
  assert 6 * n_opt * d_opt == pytest.approx(1e21)
  sizes = n_opt * np.geomspace(0.5, 2, 41)
  losses = approach3.loss(params, sizes, 1e21 / (6 * sizes))
  assert np.argmin(losses) == 20


@pytest.mark.parametrize('corrupt, message', [
    (lambda runs: runs.pop('D'), "missing column 'D'"),
    (lambda runs: runs['loss'].__setitem__(3, np.nan), "column 'loss'.*row 4"),
    (lambda runs: runs['N'].__setitem__(0, -5.0), "column 'N'.*row 1"),
    (lambda runs: runs['D'].__setitem__(1, 0.0), "column 'D'"),
])
def test_bad_input_fails_naming_the_problem(corrupt, message):
  runs = {name: np.array(values, float) for name, values in synthetic.grid_runs().items()}
  corrupt(runs)
  with pytest.raises(ValueError, match=message):
    approach3.fit(runs, num_bootstrap=0)


def test_too_few_points_fails():
  runs = {name: values[:5] for name, values in synthetic.grid_runs().items()}
  with pytest.raises(ValueError, match='at least 6 runs'):
    approach3.fit(runs, num_bootstrap=0)


def test_unknown_fixed_parameter_fails():
  with pytest.raises(ValueError, match="Cannot fix 'gamma'"):
    approach3.fit(synthetic.grid_runs(), fixed={'gamma': 1.0}, num_bootstrap=0)


def test_a_degenerate_resample_has_no_compute_optimum_rather_than_a_complex_one():
  from jaxscale.scaling.laws import approach3
  degenerate = {'alpha': -0.3, 'beta': 0.2, 'A': 400.0, 'B': 410.0}
  n_opt, d_opt = approach3.compute_optimal(degenerate, 1e13)
  assert np.isnan(n_opt) and np.isnan(d_opt)
  n_opt, d_opt = approach3.compute_optimal({'alpha': 0.34, 'beta': 0.28, 'A': 406.4, 'B': 410.7},
                                           1e13)
  assert np.isfinite(n_opt) and n_opt * d_opt == pytest.approx(1e13 / 6)


def test_bootstrap_refits_are_polished_like_the_point_estimate():
  """A resample that draws every point once is the full data: its refit must land on the point
  estimate to float64 precision, which the float32 solver iterations alone do not reach."""
  runs = synthetic.grid_runs(noise=0.004, seed=3)
  log_x, log_y = parametric_fit.log_columns(approach3.SPEC, runs)
  best = parametric_fit.fit(approach3.SPEC, log_x, log_y, approach3.start_grid())
  start = best.theta + np.array([0.3, -0.3, 0.02, -0.02, 0.05])
  moved = dataclasses.replace(best, theta=start)
  refit = parametric_fit.refit_batch(moved, log_x, log_y, np.ones((1, len(log_y))))[0]
  np.testing.assert_allclose(refit, best.theta, rtol=0, atol=1e-6)
  assert parametric_fit.num_failed(np.array([refit, np.full_like(refit, np.nan)])) == 1


def test_weighting_by_stderr_trusts_precise_runs_and_equal_errors_change_nothing():
  truth = {'E': 1.9, 'A': 500.0, 'B': 1500.0, 'alpha': 0.36, 'beta': 0.31}
  runs = synthetic.grid_runs(truth, noise=0.002, seed=1)
  clean = approach3.loss(truth, runs['N'], runs['D'])
  # The smaller models' runs measured on a small, harder slice of the eval split: their losses
  # too high by a few percent (the Huber fit, robust to scattered outliers, follows a
  # consistent shift), their standard errors saying how little to trust them.
  rng = np.random.default_rng(2)
  noisy = runs['N'] < 2e8
  stderr = np.where(noisy, 0.05, 0.002) * clean
  runs['loss'] = np.where(noisy, clean * np.exp(np.abs(0.05 * rng.standard_normal(len(clean)))),
                          runs['loss'])
  runs['eval_loss_stderr'] = stderr
  unweighted = approach3.fit(runs, num_bootstrap=0)
  weighted = approach3.fit(runs, num_bootstrap=0, weight_by_stderr=True)
  assert weighted['weighted_by'] == 'eval_loss_stderr' and 'weighted_by' not in unweighted
  error = lambda fit: abs(fit['alpha'] - truth['alpha']) + abs(fit['beta'] - truth['beta'])
  assert error(weighted) < 0.02 and error(weighted) < 0.5 * error(unweighted)
  # Every run equally precise: the weighted fit is the unweighted one.
  runs['eval_loss_stderr'] = 0.01 * runs['loss']
  equal = approach3.fit(runs, num_bootstrap=0, weight_by_stderr=True)
  for name in ('E', 'alpha', 'beta'):
    assert equal[name] == pytest.approx(unweighted[name], rel=1e-3)
  runs['eval_loss_stderr'][0] = np.nan  # A run without one (collected before the field).
  with pytest.raises(ValueError, match='positive eval_loss_stderr for every run'):
    approach3.fit(runs, num_bootstrap=0, weight_by_stderr=True)
