"""Robust multi-start fits of `forms.LawSpec` laws, and their bootstrap.

The recipe is Besiroglu et al. 2024's correction of Hoffmann et al. 2022's Approach 3: minimise
the SUM of Huber losses (delta 1e-3) of log-loss residuals from every start of a grid, keep the
best. The search runs in two stages so that the answer equals what an L-BFGS loop over every start
finds, at a small fraction of the time:
  1. every start: a few Levenberg-Marquardt iterations, vmapped in float32 (`lm_solver`), which
     is enough to see which basin each start is in;
  2. the best few distinct results: scipy's robust least squares in float64 to full precision
     (loss='huber' with f_scale=delta minimises exactly the summed Huber loss).
The bootstrap refits resamples (multinomial counts as point weights) from the full-data optimum,
with the same two stages: a batch of solver iterations, then the float64 polish on each.
"""

import dataclasses

import numpy as np
import scipy.optimize

from jaxscale.scaling.laws import forms
from jaxscale.scaling.solvers import lm_solver, lse_law

SCREEN_ITERATIONS = 15  # Stage 1, on every start: enough to rank the basins.
POLISH_STARTS = 8       # Stage 2 finishes this many distinct stage-1 results in float64.
BOOTSTRAP_ITERATIONS = 60


@dataclasses.dataclass
class Fit:
  spec: forms.LawSpec
  theta: np.ndarray     # Internal parameter vector (see `lse_law`).
  objective: float      # Summed Huber loss at theta.
  num_points: int
  fixed: dict           # Pinned parameters, {name: value}.

  @property
  def params(self) -> dict[str, float]:
    return self.spec.to_params(self.theta, self.fixed)

  def resample_params(self, theta) -> dict[str, float]:
    """Named parameters of a bootstrap refit's theta."""
    return self.spec.to_params(theta, self.fixed)


def log_columns(spec: forms.LawSpec, table) -> tuple[np.ndarray, np.ndarray]:
  """(log X [n, m], log loss [n]) for the law's variables."""
  log_x = np.stack([np.log(table[name]) for name in spec.variables], axis=1)
  return log_x, np.log(table['loss'])


def fit(spec, log_x, log_y, starts, fixed=None, delta=lse_law.HUBER_DELTA) -> Fit:
  """Best fit over `starts` [S, P] with the parameters in `fixed` ({name: value}) pinned."""
  pinned = spec.pinned_theta(fixed or {})
  free = np.isnan(pinned)
  starts = np.unique(np.where(free, starts, pinned), axis=0)
  padded_x, padded_y, weights = _pad_points(log_x, log_y, np.ones_like(log_y))
  thetas, objectives = lm_solver.solve_from_starts(
      starts, padded_x, padded_y, weights, free, delta, SCREEN_ITERATIONS)
  polished = []
  for theta in _best_distinct(thetas, objectives, POLISH_STARTS):
    theta = _polish(theta, log_x, log_y, free, delta)
    objective = lse_law.huber_objective(theta, log_x, log_y, delta)
    polished.append((objective if np.isfinite(objective) else np.inf, theta))
  objective, theta = min(polished, key=lambda pair: pair[0])
  return Fit(spec, theta, objective, len(log_y), dict(fixed or {}))


def refit_batch(fitted: Fit, log_x, log_y, weights, delta=lse_law.HUBER_DELTA):
  """Refits from `fitted` for each row of weights [B, n] (and of log_y, if [B, n] too).

  Each refit gets the point estimate's treatment: the vmapped solver's iterations, then the same
  float64 polish (`_polish`) on the points its weights draw. Returns thetas [B, P]; rows whose
  refit diverged are NaN (`num_failed` counts them).
  """
  free = np.isnan(fitted.spec.pinned_theta(fitted.fixed))
  log_y = np.broadcast_to(log_y, np.shape(weights))
  padded_x, padded_y, padded_weights = _pad_points(log_x, log_y, weights)
  thetas, objectives = lm_solver.solve_batch(
      fitted.theta, padded_x, padded_y, padded_weights, free, delta, BOOTSTRAP_ITERATIONS)
  thetas = np.array(thetas, float)
  for row, counts in enumerate(np.asarray(weights)):
    drawn = np.repeat(np.arange(len(counts)), np.round(counts).astype(int))
    if not np.isfinite(objectives[row]) or drawn.size <= np.sum(free):
      thetas[row] = np.nan
      continue
    thetas[row] = _polish(thetas[row], log_x[drawn], log_y[row][drawn], free, delta)
    objective = lse_law.huber_objective(thetas[row], log_x[drawn], log_y[row][drawn], delta)
    if not np.isfinite(objective):
      thetas[row] = np.nan
  return thetas


def num_failed(thetas) -> int:
  """Refits in `refit_batch`'s output that diverged (NaN rows)."""
  return int(np.sum(np.all(np.isnan(thetas), axis=1)))


def bootstrap(fitted: Fit, log_x, log_y, num_resamples=1000, seed=0,
              delta=lse_law.HUBER_DELTA) -> np.ndarray:
  """Refits on `num_resamples` resamples of the points (with replacement): thetas [B, P]."""
  n = len(log_y)
  counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=num_resamples)
  return refit_batch(fitted, log_x, log_y, counts, delta)


def _pad_points(log_x, log_y, weights):
  """Pads the point axis to a power of two with zero-weight copies of the first point.

  Compiled solvers are cached by shape, so fits of 200 and 240 points share one compilation.
  """
  n = log_x.shape[0]
  padding = max(16, 1 << (n - 1).bit_length()) - n
  first = lambda values: np.repeat(values[..., :1], padding, axis=-1)
  log_x = np.concatenate([log_x, np.repeat(log_x[:1], padding, axis=0)])
  log_y = np.concatenate([log_y, first(log_y)], axis=-1)
  weights = np.concatenate([weights, np.zeros_like(first(weights))], axis=-1)
  return log_x, log_y, weights


def _best_distinct(thetas, objectives, count) -> list[np.ndarray]:
  """Up to `count` lowest-objective thetas, skipping repeats (many starts share one optimum)."""
  chosen = []
  for index in np.argsort(objectives):
    if not np.isfinite(objectives[index]):
      break
    if not any(_same_point(thetas[index], other) for other in chosen):
      chosen.append(thetas[index])
    if len(chosen) == count:
      break
  if not chosen:
    raise ValueError('The fit diverged from every start (no finite objective); check the data.')
  return chosen


def _same_point(theta, other) -> bool:
  # Compare finite entries only: a pinned -inf offset is the same in both, but inf - inf is NaN.
  finite = np.isfinite(theta) & np.isfinite(other)
  return np.max(np.abs(theta[finite] - other[finite]), initial=0.0) <= 1e-3


def _polish(theta, log_x, log_y, free, delta) -> np.ndarray:
  """theta converged in float64 over its free parameters by scipy's Huber least squares."""
  def full(free_values):
    values = theta.copy()
    values[free] = free_values
    return values

  result = scipy.optimize.least_squares(
      lambda values: lse_law.log_prediction(full(values), log_x) - log_y, theta[free],
      jac=lambda values: lse_law.jacobian(full(values), log_x)[:, free],
      loss='huber', f_scale=delta, xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=1000)
  return full(result.x)
