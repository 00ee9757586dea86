"""Sums of power laws written in log space, and their Huber objective in float64 numpy.

Every law the fitters use has the form

  L(X_1..X_m) = E + sum_j exp(c_j) / X_j^g_j,

evaluated as log L = logsumexp(c_1 - g_1 log X_1, ..., c_m - g_m log X_m, e) with E = exp(e).
Chinchilla's L(N, D) is m = 2 (c = a, b; g = alpha, beta); a Kaplan power law with an offset is
m = 1, and without one it pins e = -inf. Working in log space keeps every term positive and lets
the optimizer step freely (Besiroglu et al. 2024 follow Hoffmann et al. 2022 in this).

Parameter vectors are laid out theta = [c_1..c_m, g_1..g_m, e].
"""

import numpy as np
import scipy.special

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022's delta for residuals of log loss.


def num_params(num_terms: int) -> int:
  return 2 * num_terms + 1


def log_prediction(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
  """log L for each row of log_x (shape [n, m])."""
  return np.logaddexp.reduce(_exponents(theta, log_x), axis=1)


def jacobian(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
  """d log L / d theta at each point, [n, P]."""
  exponents = _exponents(np.asarray(theta, float), log_x)
  shares = np.exp(exponents - np.logaddexp.reduce(exponents, axis=1)[:, None])  # softmax
  m = log_x.shape[1]
  return np.concatenate([shares[:, :m], -shares[:, :m] * log_x, shares[:, m:]], axis=1)


def huber_objective(theta, log_x, log_y, delta=HUBER_DELTA, weights=None) -> float:
  """Sum over points of Huber(log prediction - log y); `weights` are per-point counts."""
  residuals = log_prediction(np.asarray(theta, float), log_x) - log_y
  losses = scipy.special.huber(delta, residuals)
  return float(np.sum(losses if weights is None else weights * losses))


def huber_objective_and_grad(theta, log_x, log_y, delta=HUBER_DELTA, weights=None):
  """(objective, gradient) for scipy.optimize.minimize(jac=True); exact, in float64."""
  theta = np.asarray(theta, float)
  exponents = _exponents(theta, log_x)
  log_pred = np.logaddexp.reduce(exponents, axis=1)
  residuals = log_pred - log_y
  slopes = np.clip(residuals, -delta, delta)  # Huber's derivative.
  losses = scipy.special.huber(delta, residuals)
  if weights is not None:
    slopes, losses = weights * slopes, weights * losses
  shares = np.exp(exponents - log_pred[:, None])  # d log_pred / d exponent_j (softmax).
  m = log_x.shape[1]
  grad_c = shares[:, :m].T @ slopes
  grad_g = -(shares[:, :m] * log_x).T @ slopes
  grad_e = np.array([shares[:, m] @ slopes])
  # A pinned e = -inf (no offset) has zero share; keep its gradient a clean zero.
  return float(np.sum(losses)), np.nan_to_num(np.concatenate([grad_c, grad_g, grad_e]))


def _exponents(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
  m = log_x.shape[1]
  coefs, exponents, offset = theta[:m], theta[m:2 * m], theta[2 * m]
  terms = coefs[None, :] - exponents[None, :] * log_x
  return np.concatenate([terms, np.full((log_x.shape[0], 1), offset)], axis=1)
