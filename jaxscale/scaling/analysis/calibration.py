"""Prediction intervals calibrated on a backtest's own out-of-sample errors.

Split-conformal with a fitted error model in log-compute distance: each backtest error is a
(distance, log error) pair, distance = log10(C / largest fitted C) and log error = log(actual /
predicted). The typical size of an error grows with distance; a line s(d) = scale + slope * d
fitted to |log error| models that, and the conformal quantile q of |log error| / s(d) (with the
finite-sample (n + 1) correction) sets the interval at any distance:

  predicted * exp(+-q * s(d)).

The error model and the quantile rest on separate errors (2-fold cross-fitting): the errors are
split into two folds, alternating along distance within each rolling origin's block, and each
error is scored against the line fitted to the other fold only, so the line never shapes the
scores it is judged by; the line stored for use is fitted to all errors. (Leave-one-origin-out
was tried: one origin is often the only evidence of how errors grow, and without it the scores
explode.) With fewer than 6 errors there is nothing to cross-fit: the model is a constant scale,
which cancels from the interval, leaving the plain conformal quantile of |log error|.

So the stated coverage is the coverage the backtest observed, at the distances it observed. A
request beyond the largest backtested distance d_max extrapolates: the scale grows at least in
proportion to distance, s(d) >= s(d_max) * d / d_max, and the request says so.
"""

import math

import numpy as np

from jaxscale.scaling.solvers import intervals

NOMINAL_COVERAGE = intervals.CONFIDENCE  # As the bootstrap intervals: 95%.
MIN_SCALE = 1e-4  # Floor of s(d), in log loss: no interval collapses to a point.
SCALE_FLOOR = 0.25  # Least intercept of the error line, as a fraction of the mean error.


class TooFewErrors(ValueError):
  """The backtest gave too few errors for a finite conformal bound."""


def min_errors(nominal=NOMINAL_COVERAGE) -> int:
  """The fewest errors whose conformal quantile is finite: (n + 1) * nominal <= n."""
  return math.ceil(nominal / (1 - nominal) - 1e-9)


def fit(distances, log_errors, nominal=NOMINAL_COVERAGE, groups=None) -> dict:
  """The error model and conformal quantile (a JSON-ready dict) from backtest errors; `groups`
  labels each error's block (its rolling origin), for the cross-fitted scores."""
  distances, sizes = np.asarray(distances, float), np.abs(np.asarray(log_errors, float))
  groups = np.zeros(len(sizes), int) if groups is None else np.asarray(groups)
  keep = np.isfinite(distances) & np.isfinite(sizes)
  distances, sizes, groups = distances[keep], sizes[keep], groups[keep]
  if sizes.size == 0:
    raise ValueError('No backtest errors to calibrate on: too few compute budgets to hold any out.')
  blocks = np.unique(groups)
  scale, slope = _line(distances, sizes)
  folds = _folds(distances, groups)
  if sizes.size < 6:
    scale, slope = max(float(np.mean(sizes)), MIN_SCALE), 0.0
    scores = sizes / scale
    how = 'too few errors to cross-fit: constant scale, plain conformal quantile of |log error|'
  else:
    scores = np.empty_like(sizes)
    for fold in (0, 1):
      inside = folds == fold
      fold_scale, fold_slope = _line(distances[~inside], sizes[~inside])
      scores[inside] = sizes[inside] / _size(fold_scale, fold_slope, distances[inside])
    how = ('2-fold cross-fitting: each error scored against the line fitted to the other fold '
           '(folds alternate along distance within each origin block)')
  level = math.ceil((sizes.size + 1) * nominal) / sizes.size
  model = {'method': 'split-conformal on backtest errors, scaled by a linear error model in '
                     'log10 compute distance',
           'error_model': how,
           'nominal_coverage': nominal, 'num_errors': int(sizes.size),
           'num_blocks': int(len(blocks)),
           'scale': scale, 'slope': slope,
           'max_backtested_distance': float(distances.max())}
  if level > 1:
    raise TooFewErrors(
        f'{sizes.size} backtest errors are too few for a {nominal:.0%} split-conformal interval '
        f'(it needs {min_errors(nominal)}); add compute budgets, or lower the nominal coverage.')
  model['quantile'] = float(np.quantile(scores, level, method='higher'))
  return model


def interval(model: dict, predicted, distance) -> list:
  """[low, high] around `predicted` at log10 compute distance `distance`."""
  half = model['quantile'] * model_size(model, distance)
  return [float(predicted * math.exp(-half)), float(predicted * math.exp(half))]


def model_size(model: dict, distance) -> float:
  """s(d): the line within the backtested distances, growing at least in proportion to the
  distance beyond them."""
  distance = max(float(distance), 0.0)
  size = float(_size(model['scale'], model['slope'], distance))
  reach = model.get('max_backtested_distance', np.inf)
  if 0 < reach < distance:
    size = max(size, float(_size(model['scale'], model['slope'], reach)) * distance / reach)
  return size


def _folds(distances, groups) -> np.ndarray:
  """0/1 per error, alternating along distance within each origin block, so that both folds
  span every block and every distance (the line of one is fair to the other)."""
  folds = np.zeros(len(distances), int)
  offset = 0
  for block in np.unique(groups):
    members = np.flatnonzero(groups == block)
    ordered = members[np.argsort(distances[members], kind='stable')]
    folds[ordered] = (np.arange(len(ordered)) + offset) % 2
    offset += len(ordered)  # Blocks of odd size alternate which fold gets their first error.
  return folds


def _line(distances, sizes) -> tuple[float, float]:
  """(scale, slope) of s(d) = scale + slope * d fitted to |log errors|; slope >= 0 (errors do not
  shrink with distance); a constant where the distances do not vary. The intercept is floored at
  SCALE_FLOOR of the mean error (and MIN_SCALE): a line through the origin would call the
  nearest errors of another block enormous, and the cross-fitted quantile with them."""
  slope, scale = 0.0, float(np.mean(sizes))
  if sizes.size >= 3 and np.ptp(distances) > 0:
    slope = max(float(np.polyfit(distances, sizes, 1)[0]), 0.0)
    scale = float(np.mean(sizes - slope * distances))
  return max(scale, SCALE_FLOOR * float(np.mean(sizes)), MIN_SCALE), slope


def describe(model: dict, distance) -> dict:
  """What `predict` says about a request's place relative to the fitted and backtested range."""
  out = {'pi_method': model['method'], 'nominal_coverage': model['nominal_coverage'],
         'extrapolation_ratio': float(10 ** distance),
         'max_backtested_ratio': float(10 ** model['max_backtested_distance'])}
  if distance > model['max_backtested_distance']:
    out['beyond_backtested'] = True
    out['warning'] = (
        f'This request is {10 ** distance:.3g}x the largest fitted compute; backtests reached '
        f'only {10 ** model["max_backtested_distance"]:.3g}x. The interval extrapolates the '
        'error model and its coverage is untested there.')
  return out


def distance(compute, fitted_max_compute) -> float:
  return float(np.log10(np.asarray(compute, float) / fitted_max_compute))


def _size(scale, slope, distances):
  return np.maximum(scale + slope * np.asarray(distances, float), MIN_SCALE)
