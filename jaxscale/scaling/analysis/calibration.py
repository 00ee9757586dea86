"""Prediction intervals calibrated on a backtest's own out-of-sample errors.

Split-conformal with a fitted error model in log-compute distance: each backtest error is a
(distance, log error) pair, distance = log10(C / largest fitted C) and log error = log(actual /
predicted). The typical size of an error grows with distance; a line s(d) = scale + slope * d
fitted to |log error| models that, and the conformal quantile q of |log error| / s(d) (with the
finite-sample (n + 1) correction) sets the interval at any distance:

  predicted * exp(+-q * s(d)).

So the stated coverage is the coverage the backtest observed, at the distances it observed. A
request beyond the largest backtested distance extrapolates the line, and says so.
"""

import math

import numpy as np

from jaxscale.scaling.solvers import intervals

NOMINAL_COVERAGE = intervals.CONFIDENCE  # As the bootstrap intervals: 95%.
MIN_SCALE = 1e-4  # Floor of s(d), in log loss: no interval collapses to a point.


class TooFewErrors(ValueError):
  """The backtest gave too few errors for a finite conformal bound."""


def min_errors(nominal=NOMINAL_COVERAGE) -> int:
  """The fewest errors whose conformal quantile is finite: (n + 1) * nominal <= n."""
  return math.ceil(nominal / (1 - nominal) - 1e-9)


def fit(distances, log_errors, nominal=NOMINAL_COVERAGE) -> dict:
  """The error model and conformal quantile (a JSON-ready dict) from backtest errors."""
  distances, sizes = np.asarray(distances, float), np.abs(np.asarray(log_errors, float))
  keep = np.isfinite(distances) & np.isfinite(sizes)
  distances, sizes = distances[keep], sizes[keep]
  if sizes.size == 0:
    raise ValueError('No backtest errors to calibrate on: too few compute budgets to hold any out.')
  slope, scale = 0.0, float(np.mean(sizes))
  if np.ptp(distances) > 0 and sizes.size >= 3:
    slope, scale = np.polyfit(distances, sizes, 1)
    slope = max(float(slope), 0.0)  # Errors do not shrink with distance.
    scale = float(np.mean(sizes - slope * distances))
  scale = max(scale, MIN_SCALE)
  scores = sizes / _size(scale, slope, distances)
  level = math.ceil((sizes.size + 1) * nominal) / sizes.size
  model = {'method': 'split-conformal on backtest errors, scaled by a linear error model in '
                     'log10 compute distance',
           'nominal_coverage': nominal, 'num_errors': int(sizes.size),
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
  half = model['quantile'] * _size(model['scale'], model['slope'], max(float(distance), 0.0))
  return [float(predicted * math.exp(-half)), float(predicted * math.exp(half))]


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
