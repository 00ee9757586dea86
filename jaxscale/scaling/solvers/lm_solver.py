"""Levenberg-Marquardt on iteratively reweighted residuals, vmapped over many starts at once.

Minimises sum_i w_i Huber(log_pred(theta, x_i) - log_y_i) for the laws of `lse_law`. Each
iteration reweights the residuals so the Huber objective is majorised by a weighted least-squares
problem (IRLS weight min(1, delta/|r|)), takes one damped Gauss-Newton step on it, and keeps the
step only if the true Huber objective fell. A fixed iteration count with no line search means
every lane of a vmap does the same work, unlike vmapped L-BFGS whose line search runs all lanes
to the worst case; thousands of starts then cost about as much as one batched solve.

Everything here runs in float32: fast, and enough to find the basin of the optimum;
`parametric_fit` finishes the winners in float64.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_LAMBDA_INIT = 1e-3
_LAMBDA_UP, _LAMBDA_DOWN = 4.0, 0.3
_LAMBDA_MIN, _LAMBDA_MAX = 1e-9, 1e9


def _prediction_and_jacobian(theta, log_x):
  """log L at each point and its exact derivatives with respect to theta ([n], [n, P])."""
  m = log_x.shape[1]
  terms = theta[:m] - theta[m:2 * m] * log_x
  offset = jnp.broadcast_to(theta[2 * m], (log_x.shape[0], 1))
  exponents = jnp.concatenate([terms, offset], axis=1)
  largest = jnp.max(exponents, axis=1, keepdims=True)
  scaled = jnp.exp(exponents - largest)
  total = jnp.sum(scaled, axis=1, keepdims=True)
  shares = scaled / total  # softmax: d log L / d exponent_j.
  log_pred = (largest + jnp.log(total))[:, 0]
  jacobian = jnp.concatenate([shares[:, :m], -shares[:, :m] * log_x, shares[:, m:]], axis=1)
  return log_pred, jacobian


def _huber(residuals, delta):
  magnitude = jnp.abs(residuals)
  return jnp.where(magnitude <= delta, 0.5 * residuals ** 2, delta * (magnitude - 0.5 * delta))


class _Point(NamedTuple):
  theta: jax.Array
  objective: jax.Array
  residuals: jax.Array
  jacobian: jax.Array


def _evaluate(theta, log_x, log_y, weights, delta) -> _Point:
  log_pred, jacobian = _prediction_and_jacobian(theta, log_x)
  residuals = log_pred - log_y
  objective = jnp.sum(weights * _huber(residuals, delta))
  return _Point(theta, jnp.where(jnp.isfinite(objective), objective, jnp.inf), residuals, jacobian)


def _damped_step(point, weights, free, delta, damping):
  jacobian = point.jacobian * free
  magnitude = jnp.maximum(jnp.abs(point.residuals), 1e-30)
  irls = weights * jnp.minimum(1.0, delta / magnitude)
  hessian = jacobian.T @ (irls[:, None] * jacobian)
  gradient = jacobian.T @ (irls * point.residuals)
  # Marquardt scaling by the diagonal, floored so a parameter with no influence yet still gets a
  # positive definite system; pinned parameters get an identity row so their step is exactly 0.
  diagonal = jnp.diag(hessian)
  floor = 1e-6 * jnp.max(diagonal) + 1e-30
  system = hessian + jnp.diag(damping * jnp.maximum(diagonal, floor) + (1.0 - free))
  # Cholesky: the system is symmetric positive definite, and it compiles faster than LU.
  return -jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(system), gradient)


def _solve_one(theta, log_x, log_y, weights, free, delta, num_iterations):
  def iteration(state, _):
    point, damping = state
    step = _damped_step(point, weights, free, delta, damping)
    candidate = _evaluate(point.theta + step, log_x, log_y, weights, delta)
    accept = candidate.objective < point.objective
    point = jax.tree.map(lambda new, old: jnp.where(accept, new, old), candidate, point)
    damping = jnp.clip(jnp.where(accept, damping * _LAMBDA_DOWN, damping * _LAMBDA_UP),
                       _LAMBDA_MIN, _LAMBDA_MAX)
    return (point, damping), None

  start = (_evaluate(theta, log_x, log_y, weights, delta), jnp.asarray(_LAMBDA_INIT, theta.dtype))
  (point, _), _ = jax.lax.scan(iteration, start, None, length=num_iterations)
  return point.theta, point.objective


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def _solve_from_starts(starts, log_x, log_y, weights, free, delta, num_iterations):
  solve = functools.partial(_solve_one, num_iterations=num_iterations)
  return jax.vmap(solve, in_axes=(0, None, None, None, None, None))(
      starts, log_x, log_y, weights, free, delta)


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def _solve_batch(start, log_x, log_y, weights, free, delta, num_iterations):
  solve = functools.partial(_solve_one, num_iterations=num_iterations)
  return jax.vmap(solve, in_axes=(None, None, 0, 0, None, None))(
      start, log_x, log_y, weights, free, delta)


def solve_from_starts(starts, log_x, log_y, weights, free, delta, num_iterations):
  """Solve from each row of `starts` [S, P] on one data set (`weights` [n]).

  Returns numpy (thetas [S, P], objectives [S]) in float64 (computed in float32).
  """
  return _as_float64(_solve_from_starts(
      *_single(starts, log_x, log_y, weights, free, delta), num_iterations=num_iterations))


def solve_batch(start, log_x, log_y, weights, free, delta, num_iterations):
  """Solve from one `start` [P] for each row of `log_y` and `weights` ([B, n]; e.g. bootstrap
  resample counts). Returns numpy (thetas [B, P], objectives [B]) in float64."""
  log_y = np.broadcast_to(log_y, np.shape(weights))
  return _as_float64(_solve_batch(
      *_single(start, log_x, log_y, weights, free, delta), num_iterations=num_iterations))


def _single(*arrays):
  return [np.asarray(array, np.float32) for array in arrays]


def _as_float64(results):
  return tuple(np.asarray(result, np.float64) for result in results)
