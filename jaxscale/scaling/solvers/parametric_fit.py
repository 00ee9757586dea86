"""Robust multi-start fits of `forms.LawSpec` laws, and their bootstrap.

The recipe is Besiroglu et al. 2024's correction of Hoffmann et al. 2022's Approach 3: minimise
the SUM of Huber losses (delta 1e-3) of log-loss residuals from every start of a grid, keep the
best. The search runs in two stages so that the answer equals what an L-BFGS loop over every start
finds, at a small fraction of the time:
  1. every start: a few Levenberg-Marquardt iterations, vmapped in float32 (`lm_solver`), which
     is enough to see which basin each start is in;
  2. the best few distinct results: scipy's robust least squares in float64 to full precision
     (loss='huber' with f_scale=delta minimises exactly the summed Huber loss).
The bootstrap explores each resample as the main fit explores the data: every resample is refitted
from the full-data optimum (a batch of solver iterations) and from the best start of a profile
grid over the exponents (for fixed exponents the law is linear in its coefficients and E, which
non-negative least squares solves outright, `profile_starts`); both are polished in float64 and
the lower objective is kept. A resample whose every start diverges (or overflows) is dropped and
counted (`num_failed`), never fitted from nonsense. The main fit adds the profile grid's best
starts to its candidates too.
"""

import itertools

import dataclasses

import numpy as np
import scipy.optimize
import scipy.special

from jaxscale.scaling.laws import forms
from jaxscale.scaling.solvers import lm_solver, lse_law

SCREEN_ITERATIONS = 15  # Stage 1, on every start: enough to rank the basins.
POLISH_STARTS = 8       # Stage 2 finishes this many distinct stage-1 results in float64.
BOOTSTRAP_ITERATIONS = 60
BOOTSTRAP_EVALUATIONS = 200  # Polish budget per refit start (a healthy one converges in far fewer).
PROFILE_EXPONENTS = np.linspace(0.05, 1.5, 8)  # Grid per free exponent for `profile_starts`.
MAX_LOG_COEFFICIENT = 700.0  # exp() of more overflows float64: such a refit has diverged.


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


def fit(spec, log_x, log_y, starts, fixed=None, delta=lse_law.HUBER_DELTA,
        point_weights=None) -> Fit:
  """Best fit over `starts` [S, P] with the parameters in `fixed` ({name: value}) pinned.

  `point_weights` [n] weight each point's Huber loss (None: all 1, the unweighted fit)."""
  pinned = spec.pinned_theta(fixed or {})
  free = np.isnan(pinned)
  starts = np.unique(np.where(free, starts, pinned), axis=0)
  ones = np.ones_like(log_y)
  weights = ones if point_weights is None else np.asarray(point_weights, float)
  padded_x, padded_y, padded_weights = _pad_points(log_x, log_y, weights)
  thetas, objectives = lm_solver.solve_from_starts(
      starts, padded_x, padded_y, padded_weights, free, delta, SCREEN_ITERATIONS)
  candidates = _best_distinct(thetas, objectives, POLISH_STARTS, required=False)
  profiled = profile_starts(spec, log_x, log_y, weights[None], pinned, count=2)[0]
  # A grid with fewer points than `count` (exponents pinned) leaves NaN slots: not starts.
  candidates += [theta for theta in profiled if np.all(np.isfinite(theta[free]))]
  polished = []
  for theta in candidates:
    theta = _polish(theta, log_x, log_y, free, delta, point_weights=point_weights)
    objective = lse_law.huber_objective(theta, log_x, log_y, delta, weights=point_weights)
    healthy = np.isfinite(objective) and _sane(theta, free)
    polished.append((objective if healthy else np.inf, theta))
  objective, theta = min(polished, key=lambda pair: pair[0])
  if not np.isfinite(objective):
    raise ValueError('The fit diverged from every start (no finite objective); check the data.')
  return Fit(spec, theta, objective, len(log_y), dict(fixed or {}))


def refit_batch(fitted: Fit, log_x, log_y, weights, delta=lse_law.HUBER_DELTA,
                point_weights=None):
  """Refits from `fitted` for each row of weights [B, n] (and of log_y, if [B, n] too).

  Each refit explores as the point estimate does: the vmapped solver's iterations from the
  full-data optimum, and the best start of the profile grid (`profile_starts`), each polished in
  float64 (`_polish`) on the points its weights draw; the lower objective wins. Returns thetas
  [B, P]; rows whose every start diverged are NaN (`num_failed` counts them). `point_weights`
  [n]: as for `fit`, on top of the rows' counts.
  """
  pinned = fitted.spec.pinned_theta(fitted.fixed)
  free = np.isnan(pinned)
  log_y = np.broadcast_to(log_y, np.shape(weights))
  solver_weights = weights if point_weights is None else weights * np.asarray(point_weights)
  padded_x, padded_y, padded_weights = _pad_points(log_x, log_y, solver_weights)
  thetas, objectives = lm_solver.solve_batch(
      fitted.theta, padded_x, padded_y, padded_weights, free, delta, BOOTSTRAP_ITERATIONS)
  thetas = np.array(thetas, float)
  profiled = profile_starts(fitted.spec, log_x, log_y, solver_weights, pinned, count=1)
  for row, counts in enumerate(np.asarray(weights)):
    drawn = np.repeat(np.arange(len(counts)), np.round(counts).astype(int))
    if np.count_nonzero(np.round(counts)) <= np.sum(free):  # Fewer distinct points than unknowns.
      thetas[row] = np.nan
      continue
    starts = list(profiled[row]) + ([thetas[row]] if np.isfinite(objectives[row]) else [])
    best, best_objective = np.full_like(thetas[row], np.nan), np.inf
    for start in starts:
      if not np.all(np.isfinite(start[free])):
        continue
      drawn_weights = None if point_weights is None else np.asarray(point_weights)[drawn]
      theta = _polish(start, log_x[drawn], log_y[row][drawn], free, delta,
                      BOOTSTRAP_EVALUATIONS, point_weights=drawn_weights)
      objective = lse_law.huber_objective(theta, log_x[drawn], log_y[row][drawn], delta,
                                          weights=drawn_weights)
      if np.isfinite(objective) and _sane(theta, free) and objective < best_objective:
        best, best_objective = theta, objective
    thetas[row] = best
  return thetas


def profile_starts(spec, log_x, log_y, weights, pinned, count=1) -> np.ndarray:
  """The `count` best starts [B, count, P] of a grid over the free exponents, per row of weights.

  With the exponents fixed, L = E + sum_j K_j X_j^-g_j is linear in E and the K_j: non-negative
  least squares on relative residuals (L - y) / y (scipy's nnls) gives them, so each grid point
  is that exponent choice's best law, with no start of its own to get wrong. The grid points are
  ranked by the Huber objective in log space. Rows with no usable grid point are NaN.
  """
  m = spec.num_terms
  weights = np.atleast_2d(np.asarray(weights, float))
  log_y = np.broadcast_to(log_y, weights.shape)
  exponent_grid = [PROFILE_EXPONENTS if np.isnan(pinned[m + j]) else [pinned[m + j]]
                   for j in range(m)]
  grid = np.array(list(itertools.product(*exponent_grid)))  # [G, m]
  linear = list(range(m)) + [2 * m]  # theta entries that are logs of linear parameters
  free_linear = [index for index in linear if np.isnan(pinned[index])]
  chosen = [linear.index(index) for index in free_linear]
  out = np.full((len(weights), count, len(pinned)), np.nan)
  # [G, n, m + 1]: X_j^-g_j for each grid point, then E's column of ones.
  columns = np.concatenate([np.exp(-grid[:, None, :] * log_x[None]),
                            np.ones((len(grid), len(log_x), 1))], axis=2)
  pinned_linear = np.array([0.0 if np.isnan(pinned[i]) else np.exp(pinned[i]) for i in linear])
  typical = np.median(columns, axis=1)  # [G, m + 1]: a term's size, to floor a zero coefficient.
  same_y = bool(np.all(log_y == log_y[:1]))
  problems = None
  for row in range(len(weights)):
    w = weights[row]
    use = w > 0
    if use.sum() <= len(free_linear):
      continue
    if problems is None or not same_y:
      problems = _profile_problems(columns, np.exp(log_y[row]), pinned_linear, chosen)
    design, rhs = problems
    scale = np.sqrt(w[use])
    thetas = np.tile(pinned, (len(grid), 1))
    thetas[:, m:2 * m] = grid
    floor = 1e-3 * np.exp(np.min(log_y[row][use]))
    for g in range(len(grid)):
      matrix = design[g][use] * scale[:, None]
      norms = np.linalg.norm(matrix, axis=0)
      if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        thetas[g] = np.nan
        continue
      try:
        solution, _ = scipy.optimize.nnls(matrix / norms, rhs[g][use] * scale)
      except (RuntimeError, ValueError):
        thetas[g] = np.nan
        continue
      for position, value in zip(chosen, solution / norms[:len(chosen)]):
        # A zero coefficient has no log: floor its term at a thousandth of the least loss.
        thetas[g, linear[position]] = np.log(max(value, floor / typical[g, position]))
    objectives = _objectives(thetas, log_x, log_y[row], w)
    for slot, index in enumerate(np.argsort(objectives)[:count]):
      if np.isfinite(objectives[index]):
        out[row, slot] = thetas[index]
  return out


def _profile_problems(columns, y, pinned_linear, chosen):
  """(design [G, n, k], rhs [G, n]) of the relative-residual least squares at each grid point."""
  rhs = 1.0 - np.einsum('gnk,k->gn', columns, pinned_linear) / y[None]
  return columns[:, :, chosen] / y[None, :, None], rhs


def _objectives(thetas, log_x, log_y, weights) -> np.ndarray:
  """Weighted Huber objective of each row of thetas [G, P] (inf where not finite)."""
  with np.errstate(all='ignore'):
    m = log_x.shape[1]
    terms = thetas[:, None, :m] - thetas[:, None, m:2 * m] * log_x[None]
    offset = np.broadcast_to(thetas[:, None, 2 * m:], terms.shape[:2] + (1,))
    log_pred = np.logaddexp.reduce(np.concatenate([terms, offset], axis=2), axis=2)
    losses = scipy.special.huber(lse_law.HUBER_DELTA, log_pred - log_y[None])
    objectives = np.sum(weights[None] * losses, axis=1)
  return np.where(np.isfinite(objectives), objectives, np.inf)


def num_failed(thetas) -> int:
  """Refits in `refit_batch`'s output that diverged (NaN rows)."""
  return int(np.sum(np.all(np.isnan(thetas), axis=1)))


def bootstrap(fitted: Fit, log_x, log_y, num_resamples=1000, seed=0,
              delta=lse_law.HUBER_DELTA, point_weights=None) -> np.ndarray:
  """Refits on `num_resamples` resamples of the points (with replacement): thetas [B, P]."""
  n = len(log_y)
  counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=num_resamples)
  return refit_batch(fitted, log_x, log_y, counts, delta, point_weights=point_weights)


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


def _sane(theta, free) -> bool:
  """Finite, and no coefficient so large that exp() of it overflows (a diverged refit)."""
  values = theta[free]
  return bool(np.all(np.isfinite(values)) and np.all(np.abs(values) < MAX_LOG_COEFFICIENT))


def _best_distinct(thetas, objectives, count, required=True) -> list[np.ndarray]:
  """Up to `count` lowest-objective thetas, skipping repeats (many starts share one optimum)."""
  chosen = []
  for index in np.argsort(objectives):
    if not np.isfinite(objectives[index]):
      break
    if not any(_same_point(thetas[index], other) for other in chosen):
      chosen.append(thetas[index])
    if len(chosen) == count:
      break
  if not chosen and required:
    raise ValueError('The fit diverged from every start (no finite objective); check the data.')
  return chosen


def _same_point(theta, other) -> bool:
  # Compare finite entries only: a pinned -inf offset is the same in both, but inf - inf is NaN.
  finite = np.isfinite(theta) & np.isfinite(other)
  return np.max(np.abs(theta[finite] - other[finite]), initial=0.0) <= 1e-3


def _polish(theta, log_x, log_y, free, delta, max_evaluations=1000,
            point_weights=None) -> np.ndarray:
  """theta converged in float64 over its free parameters by scipy's Huber least squares (with
  `point_weights`: scipy's L-BFGS-B on the weighted Huber objective, whose weights least
  squares cannot take)."""
  def full(free_values):
    values = theta.copy()
    values[free] = free_values
    return values

  if point_weights is not None:
    def objective_and_grad(values):
      objective, grad = lse_law.huber_objective_and_grad(full(values), log_x, log_y, delta,
                                                         weights=point_weights)
      return objective, grad[free]
    result = scipy.optimize.minimize(
        objective_and_grad, theta[free], jac=True, method='L-BFGS-B',
        options={'maxiter': max_evaluations, 'ftol': 1e-15, 'gtol': 1e-12})
    return full(result.x)

  result = scipy.optimize.least_squares(
      lambda values: lse_law.log_prediction(full(values), log_x) - log_y, theta[free],
      jac=lambda values: lse_law.jacobian(full(values), log_x)[:, free],
      loss='huber', f_scale=delta, xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=max_evaluations)
  return full(result.x)
