"""One-variable power laws L(X) = E + k / X^gamma: Kaplan's laws and loss-vs-compute frontiers.

Fitted with the same robust machinery as Approach 3 (`parametric_fit`), from starts placed by the
data: offsets below the smallest loss, and for each (E, gamma) the k that passes through the
median point.
"""

import itertools

import numpy as np

from jaxscale.scaling.laws import forms
from jaxscale.scaling.solvers import intervals, parametric_fit

_EXPONENT_STARTS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)
_OFFSET_FRACTIONS = (0.0, 0.2, 0.5, 0.8, 0.95)  # Of the smallest loss; 0 = no offset.


class TooFewPoints(ValueError):
  """Fewer points than free parameters + 1: callers may skip an optional law."""


def fit(variable, x, loss, fixed=None):
  """parametric_fit.Fit of L(x) = E + k/x^gamma to the points (x, loss)."""
  spec = forms.power_law(variable)
  fixed = fixed or {}
  free_params = len(spec.param_names) - len(fixed)
  if len(loss) < free_params + 1:
    raise TooFewPoints(
        f'A power law in {variable} with {free_params} free parameters needs at least '
        f'{free_params + 1} points; got {len(loss)}.')
  log_x, log_y = np.log(x)[:, None], np.log(loss)
  return parametric_fit.fit(spec, log_x, log_y, start_grid(log_x[:, 0], log_y), fixed)


def fit_if_enough(variable, x, loss, fixed=None):
  """`fit`, or None when there are too few points for it (the caller reports the law missing)."""
  try:
    return fit(variable, x, loss, fixed)
  except TooFewPoints:
    return None


def prefixed_params(prefix: str, fitted, theta) -> dict:
  """{'prefix.E': .., 'prefix.k': .., 'prefix.gamma': ..} of a refit of `fitted`; {} if it
  diverged."""
  if not np.all(np.isfinite(theta[:2])):
    return {}
  params = fitted.resample_params(theta)
  return {f'{prefix}.{name}': value for name, value in params.items()}


def start_grid(log_x, log_y) -> np.ndarray:
  """Starts [log k, gamma, log E] spread over plausible exponents and offsets."""
  smallest, median = np.exp(np.min(log_y)), np.exp(np.median(log_y))
  starts = []
  for fraction, gamma in itertools.product(_OFFSET_FRACTIONS, _EXPONENT_STARTS):
    offset = fraction * smallest
    log_k = np.log(median - offset) + gamma * np.median(log_x)
    # A start 'without offset' is E = e^-30: negligible, yet free to grow.
    starts.append((log_k, gamma, np.log(offset) if offset > 0 else -30.0))
  return np.array(starts)


def record(fitted, bootstrap_thetas=None) -> dict:
  """{E, k, gamma} plus, given bootstrap refits, their intervals and samples."""
  out = dict(fitted.params)
  if bootstrap_thetas is not None:
    samples = [fitted.resample_params(theta) for theta in bootstrap_thetas
               if np.all(np.isfinite(theta[:2]))]
    out.update(intervals.summarise(samples, fitted.spec.param_names,
                                   num_failed=len(bootstrap_thetas) - len(samples)))
  return out


def evaluate(params: dict, x):
  return params['E'] + params['k'] / np.asarray(x, float) ** params['gamma']


def inverse(params: dict, loss):
  """The x at which the law reaches `loss` (NaN at or below the asymptote E)."""
  excess = np.asarray(loss, float) - params['E']
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(excess > 0, (params['k'] / excess) ** (1.0 / params['gamma']), np.nan)
