"""Law forms outside `lse_law`'s E + sum K/X^g family, fitted by scipy's robust least squares.

Kaplan et al. 2020's joint law on non-embedding parameters N,

  L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D,

and Muennighoff et al. 2023's data-constrained law, Chinchilla's form with repeated tokens
discounted: D' = U + U R* (1 - exp(-R / R*)) for U unique tokens seen R = D / U - 1 extra times,

  L(N, D, U) = E + A / N^alpha + B / D'^beta.

Both minimise the summed Huber loss (delta 1e-3) of log-loss residuals, as Approach 3 does, from a
small grid of starts, keeping the best.
"""

import itertools

import numpy as np
import scipy.optimize
import scipy.special

from jaxscale.scaling.solvers import lse_law

KAPLAN_NAMES = ('N_c', 'D_c', 'alpha_N', 'alpha_D')
DATA_CONSTRAINED_NAMES = ('A', 'B', 'E', 'alpha', 'beta', 'R_star')


def kaplan_log_loss(theta, log_n, log_d):
  """theta = [log N_c, log D_c, alpha_N, alpha_D]."""
  log_nc, log_dc, alpha_n, alpha_d = theta
  return alpha_d * np.logaddexp((alpha_n / alpha_d) * (log_nc - log_n), log_dc - log_d)


def effective_tokens(d, unique, r_star):
  """Muennighoff et al.'s D': repeated epochs are worth less, saturating at U (1 + R*)."""
  repeats = np.maximum(np.asarray(d, float) / unique - 1.0, 0.0)
  return unique + unique * r_star * (1.0 - np.exp(-repeats / r_star))


def data_constrained_log_loss(theta, log_n, log_d, log_u):
  """theta = [log A, log B, log E, alpha, beta, log R*]."""
  log_a, log_b, log_e, alpha, beta, log_r = theta
  log_d_eff = np.log(effective_tokens(np.exp(log_d), np.exp(log_u), np.exp(log_r)))
  return np.logaddexp.reduce(
      np.stack([log_a - alpha * log_n, log_b - beta * log_d_eff,
                np.full_like(log_n, log_e)]), axis=0)


def fit_kaplan(n, d, loss) -> dict:
  log_n, log_d, log_y = np.log(n), np.log(d), np.log(loss)
  starts = [(log_nc, log_dc, alpha_n, alpha_d) for log_nc, log_dc, alpha_n, alpha_d in
            itertools.product((np.log(n).max() + 2, 30.0), (np.log(d).max(), 25.0),
                              (0.08, 0.3), (0.1,))]
  theta = _best_fit(lambda t: kaplan_log_loss(t, log_n, log_d) - log_y, starts)
  return dict(zip(KAPLAN_NAMES, (float(np.exp(theta[0])), float(np.exp(theta[1])),
                                  float(theta[2]), float(theta[3]))))


def kaplan_loss(params, n, d):
  theta = (np.log(params['N_c']), np.log(params['D_c']), params['alpha_N'], params['alpha_D'])
  return np.exp(kaplan_log_loss(theta, np.log(n), np.log(d)))


def fit_data_constrained(n, d, unique, loss, fixed=None) -> dict:
  log_n, log_d, log_u, log_y = np.log(n), np.log(d), np.log(unique), np.log(loss)
  e_start = np.log(0.5 * np.min(loss))
  starts = [(a, b, e_start if 'E' not in (fixed or {}) else np.log(fixed['E']), alpha, beta, r)
            for a, b, alpha, beta, r in itertools.product(
                (6.0,), (6.0,), (0.3, 0.6), (0.3, 0.6), (np.log(5.0), np.log(30.0)))]
  free = np.array([True, True, 'E' not in (fixed or {}), True, True, True])
  theta = _best_fit(lambda t: data_constrained_log_loss(t, log_n, log_d, log_u) - log_y, starts,
                    free)
  values = (np.exp(theta[0]), np.exp(theta[1]), np.exp(theta[2]), theta[3], theta[4],
            np.exp(theta[5]))
  return {**dict(zip(DATA_CONSTRAINED_NAMES, map(float, values))), **(fixed or {})}


def data_constrained_loss(params, n, d, unique):
  d_eff = effective_tokens(d, np.asarray(unique, float), params['R_star'])
  n = np.asarray(n, float)
  return params['E'] + params['A'] / n ** params['alpha'] + params['B'] / d_eff ** params['beta']


def _best_fit(residuals, starts, free=None) -> np.ndarray:
  """The start whose robust least-squares refinement reaches the lowest summed Huber loss."""
  best, best_objective = None, np.inf
  for start in starts:
    start = np.asarray(start, float)
    mask = np.ones(len(start), bool) if free is None else free
    def full(values, start=start, mask=mask):
      theta = start.copy()
      theta[mask] = values
      return theta
    try:
      result = scipy.optimize.least_squares(
          lambda values: residuals(full(values)), start[mask], loss='huber',
          f_scale=lse_law.HUBER_DELTA, max_nfev=400)
    except ValueError:
      continue  # A start where the law is not finite.
    theta = full(result.x)
    with np.errstate(all='ignore'):
      objective = float(np.sum(_huber(residuals(theta))))
    if np.isfinite(objective) and objective < best_objective:
      best, best_objective = theta, objective
  if best is None:
    raise ValueError('The fit diverged from every start (no finite objective); check the data.')
  return best


def _huber(residuals):
  return scipy.special.huber(lse_law.HUBER_DELTA, residuals)
