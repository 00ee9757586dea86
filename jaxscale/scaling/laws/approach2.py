"""Chinchilla Approach 2: IsoFLOP profiles.

Runs are grouped by compute budget (a `budget` column if present, else C values within 5% of each
other). Each budget's loss-vs-log N curve gets a parabola whose vertex is that budget's N_opt; its
D_opt follows the budget's own runs (a line through log D vs log N evaluated at N_opt), so exact
FLOP counts need not be 6ND. Power laws through the minima give N_opt(C) and D_opt(C), and
L(C) = E + k C^-gamma through the minimum losses gives the loss frontier.

A budget whose parabola opens downwards or has its vertex outside the sizes tried cannot locate an
optimum; the fit refuses it by name rather than extrapolate. The bootstrap resamples runs within
each budget; a resample in which some budget loses its interior minimum is left out.
"""

import numpy as np

from jaxscale.scaling.laws import allocation, envelope, power_law_fit
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import intervals, parametric_fit

MIN_RUNS_PER_BUDGET = 3  # A parabola has three coefficients.
BUDGET_TOLERANCE = 0.05


class NoInteriorMinimum(ValueError):
  pass


def budget_labels(runs) -> np.ndarray:
  """One integer label per row: its compute budget (a complete `budget` column wins)."""
  if 'budget' in runs and not _has_blanks(runs['budget']):
    _, labels = np.unique(runs['budget'], return_inverse=True)
    return labels
  return envelope.bin_relative(runs['C'], BUDGET_TOLERANCE)


def _has_blanks(column) -> bool:
  return column.dtype.kind == 'f' and bool(np.isnan(column).any())


def budget_minimum(log_n, log_d, loss, budget_name) -> tuple[float, float, float]:
  """(log N_opt, log D_opt, loss at the vertex) of one IsoFLOP curve."""
  if len(np.unique(log_n)) < MIN_RUNS_PER_BUDGET:
    raise NoInteriorMinimum(
        f'IsoFLOP budget {budget_name} has {len(np.unique(log_n))} distinct model sizes; a '
        f'parabola needs at least {MIN_RUNS_PER_BUDGET}.')
  curvature, slope, intercept = np.polyfit(log_n, loss, 2)
  vertex = -slope / (2 * curvature) if curvature > 0 else np.nan
  if not log_n.min() < vertex < log_n.max():
    raise NoInteriorMinimum(
        f'IsoFLOP budget {budget_name} has no interior minimum (the fitted parabola '
        f'{"opens downwards" if curvature <= 0 else "has its vertex outside the sizes tried"}, '
        f'N from {np.exp(log_n.min()):.3g} to {np.exp(log_n.max()):.3g}); add model sizes '
        f'around the optimum.')
  d_slope, d_intercept = np.polyfit(log_n, log_d, 1)
  loss_min = float(np.polyval([curvature, slope, intercept], vertex))
  return vertex, d_slope * vertex + d_intercept, loss_min


def minima(runs, labels, counts=None) -> dict:
  """Per budget: compute C, N_opt, D_opt, loss_min (arrays ordered by budget). `counts`
  repeat runs (a bootstrap resample)."""
  counts = np.ones(len(labels), int) if counts is None else counts
  rows = []
  for label in np.unique(labels):
    in_budget = labels == label
    drawn = np.flatnonzero(in_budget & (counts > 0))
    take = lambda values: np.repeat(values[drawn], counts[drawn])
    compute = float(np.exp(np.mean(np.log(runs['C'][in_budget]))))
    log_n_opt, log_d_opt, loss_min = budget_minimum(
        take(np.log(runs['N'])), take(np.log(runs['D'])), take(runs['loss']),
        _budget_name(runs, drawn[0], compute))
    rows.append((compute, np.exp(log_n_opt), np.exp(log_d_opt), loss_min))
  return dict(zip(('C', 'N', 'D', 'loss'), map(np.array, zip(*rows))))


def _budget_name(runs, row, compute) -> str:
  name = f'at C = {compute:.3g} FLOPs'
  if 'budget' not in runs or _has_blanks(runs['budget']):
    return name
  budget = runs['budget'][row]
  return f'{budget:.3g} ({name})' if runs['budget'].dtype.kind == 'f' else f'{budget} ({name})'


def fit(runs, fixed=None, num_bootstrap=1000, seed=0) -> dict:
  runs = table_lib.checked_runs(runs)
  labels = budget_labels(runs)
  optima = minima(runs, labels)
  loss_law = power_law_fit.fit_if_enough('C', optima['C'], optima['loss'], fixed)
  record = {
      'law': 'chinchilla', 'approach': 2,
      **allocation.fit(optima['C'], optima['N'], optima['D']),
      'frontier': loss_law and loss_law.params, 'num_points': table_lib.num_rows(runs),
      'num_budgets': len(optima['C']),
      'minima': [dict(zip(optima, map(float, values))) for values in zip(*optima.values())],
      'fixed': fixed or {}}
  if num_bootstrap:
    record.update(_bootstrap(runs, labels, loss_law, num_bootstrap, seed))
  return record


def _bootstrap(runs, labels, loss_law, num_resamples, seed) -> dict:
  rng = np.random.default_rng(seed)
  resampled = []
  for _ in range(num_resamples):
    counts = np.zeros(len(labels), int)
    for label in np.unique(labels):
      members = np.flatnonzero(labels == label)
      counts[members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)))
    try:
      resampled.append(minima(runs, labels, counts))
    except NoInteriorMinimum:
      continue
  if not resampled:
    return {'num_bootstrap': 0, 'num_bootstrap_failed': num_resamples,
            'bootstrap_failed': num_resamples}
  log_loss = np.log([optima['loss'] for optima in resampled])
  loss_thetas = np.full((len(resampled), 3), np.nan)
  if loss_law:
    log_c = np.log(resampled[0]['C'])[:, None]
    loss_thetas = parametric_fit.refit_batch(loss_law, log_c, log_loss, np.ones_like(log_loss))
  samples = [{**allocation.fit(optima['C'], optima['N'], optima['D']),
              **power_law_fit.prefixed_params('frontier', loss_law, theta)}
             for optima, theta in zip(resampled, loss_thetas)]
  names = ('a', 'b', 'N_coef', 'D_coef', 'frontier.E', 'frontier.k', 'frontier.gamma')
  failed = num_resamples - len(samples)
  summary = intervals.summarise(
      samples, names, num_failed=failed,
      why_failed="some budget lost its interior minimum: too few distinct sizes drawn")
  summary['num_frontier_refits_failed'] = parametric_fit.num_failed(loss_thetas) if loss_law else 0
  return summary
