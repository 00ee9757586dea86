"""Chinchilla Approach 3: the parametric law L(N, D) = E + A/N^alpha + B/D^beta.

Fitted as Besiroglu et al. 2024 refit Hoffmann et al. 2022 (see `parametric_fit`), from their
4,500-start grid, with bootstrap intervals on every parameter and on the compute-optimal
exponents a = beta/(alpha+beta) (N_opt ~ C^a) and b = alpha/(alpha+beta) (D_opt ~ C^b).
"""

import itertools

import numpy as np

from jaxscale.scaling.laws import forms
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import intervals, parametric_fit

SPEC = forms.CHINCHILLA
MIN_POINTS = 6  # Five parameters; fewer points than that leave no residual to judge the fit.


def start_grid() -> np.ndarray:
  """Besiroglu et al.'s grid: alpha, beta in 0..2 by 0.5, e in -1..1 by 0.5, a, b in 0..25 by 5."""
  exponents = np.arange(0.0, 2.01, 0.5)
  offsets = np.arange(-1.0, 1.01, 0.5)
  coefficients = np.arange(0.0, 25.1, 5.0)
  # Internal order [a, b, alpha, beta, e] (see lse_law).
  return np.array([(a, b, alpha, beta, e) for alpha, beta, e, a, b in itertools.product(
      exponents, exponents, offsets, coefficients, coefficients)])


def fit(runs, fixed=None, num_bootstrap=1000, seed=0, weight_by_stderr=False) -> dict:
  """fit.json record for the Chinchilla law fitted to `runs` (columns N, D, loss; C optional).

  `weight_by_stderr`: each run's Huber loss weighted by the inverse variance of its log loss,
  (loss / eval_loss_stderr)^2 (normalised to mean 1), so runs measured more precisely count
  more; off, every run counts once."""
  runs = table_lib.checked_runs(runs)
  table_lib.require_rows(runs, MIN_POINTS, 'Approach 3 (five parameters)')
  log_x, log_y = parametric_fit.log_columns(SPEC, runs)
  point_weights = stderr_weights(runs) if weight_by_stderr else None
  best = parametric_fit.fit(SPEC, log_x, log_y, start_grid(), fixed, point_weights=point_weights)
  record = {
      'law': 'chinchilla', 'approach': 3, **with_allocation(best.params),
      'num_points': best.num_points, 'objective': best.objective, 'fixed': fixed or {},
      'flops_per_param_token': table_lib.flops_per_param_token(runs)}
  if weight_by_stderr:
    record['weighted_by'] = 'eval_loss_stderr'
  if num_bootstrap:
    thetas = parametric_fit.bootstrap(best, log_x, log_y, num_bootstrap, seed,
                                      point_weights=point_weights)
    samples = [with_allocation(best.resample_params(theta)) for theta in thetas
               if not np.isnan(theta).all()]
    record.update(intervals.summarise(samples, SPEC.param_names + ('a', 'b'),
                                      num_failed=parametric_fit.num_failed(thetas)))
  return record


def stderr_weights(runs) -> np.ndarray:
  """(loss / eval_loss_stderr)^2 per run, normalised to mean 1: the inverse variance of log loss."""
  stderr = runs.get('eval_loss_stderr')
  if stderr is None or stderr.dtype.kind != 'f' or not np.all(np.isfinite(stderr) & (stderr > 0)):
    raise ValueError('Weighting by the standard error needs a positive eval_loss_stderr for every '
                     'run (collect writes it for runs that log it); fit without '
                     '--weight-by-stderr, or leave out the runs without one.')
  weights = (runs['loss'] / stderr) ** 2
  return weights / weights.mean()


def with_allocation(params: dict) -> dict:
  """params plus the compute-optimal exponents a and b."""
  total = params['alpha'] + params['beta']
  return {**params, 'a': params['beta'] / total, 'b': params['alpha'] / total}


def loss(params: dict, n, d):
  n, d = np.asarray(n, float), np.asarray(d, float)
  return params['E'] + params['A'] / n ** params['alpha'] + params['B'] / d ** params['beta']


def compute_optimal(params: dict, compute, flops_per_param_token=6.0):
  """(N_opt, D_opt) minimising L(N, D) subject to compute = flops_per_param_token * N * D."""
  alpha, beta = np.float64(params['alpha']), np.float64(params['beta'])
  with np.errstate(invalid='ignore', divide='ignore'):
    # In numpy, not Python floats: a degenerate resample (a negative exponent or coefficient)
    # has no optimum and gives NaN, which intervals leave out, rather than a complex number.
    scale = np.power(alpha * params['A'] / (beta * params['B']), 1.0 / (alpha + beta))
    tokens_times_params = np.asarray(compute, float) / flops_per_param_token
    n_opt = scale * np.power(tokens_times_params, beta / (alpha + beta))
    return n_opt, tokens_times_params / n_opt
