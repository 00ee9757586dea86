"""Prediction intervals calibrated on a backtest's own out-of-sample errors.

Split-conformal with a fitted error model in log-compute distance: each backtest error is a
(distance, log error) pair, distance = log10(C / largest fitted C) and log error = log(actual /
predicted). The typical size of an error grows with distance; a line s(d) = scale + slope * d
fitted to |log error| models that, and the conformal quantile q of |log error| / s(d) (with the
finite-sample (n + 1) correction) sets the interval at any distance:

  predicted * exp(+-q * s(d)).

The error model and the quantile rest on separate errors: backtest errors come in blocks, one
per rolling origin, and errors within a block share that origin's fit (they are dependent). Each
block's scores are taken against a line fitted to the OTHER blocks only (leave-one-origin-out
cross-fitting), so the line never shapes the scores it is judged by; the line stored for use is
fitted to all blocks. With a single block there is nothing to cross-fit against: the model is a
constant scale (which cancels from the interval, leaving the plain conformal quantile of
|log error|).

So the stated coverage is the coverage the backtest observed, at the distances it observed. A
request beyond the largest backtested distance d_max extrapolates: the scale grows at least in
proportion to distance, s(d) >= s(d_max) * d / d_max, and the request says so.
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
  if len(blocks) < 2:
    scale, slope = max(float(np.mean(sizes)), MIN_SCALE), 0.0
    scores = sizes / scale
    how = 'one block of errors: constant scale, plain conformal quantile'
  else:
    scale, slope = _line(distances, sizes)
    scores = np.empty_like(sizes)
    for block in blocks:
      inside = groups == block
      block_scale, block_slope = _line(distances[~inside], sizes[~inside])
      scores[inside] = sizes[inside] / _size(block_scale, block_slope, distances[inside])
    how = (f'{len(blocks)} origin blocks: each scored against the line fitted to the others '
           '(leave-one-origin-out)')
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


def _line(distances, sizes) -> tuple[float, float]:
  """(scale, slope) of s(d) = scale + slope * d fitted to |log errors|; slope >= 0 (errors do not
  shrink with distance), scale >= MIN_SCALE; a constant where the distances do not vary."""
  slope, scale = 0.0, float(np.mean(sizes))
  if sizes.size >= 3 and np.ptp(distances) > 0:
    slope = max(float(np.polyfit(distances, sizes, 1)[0]), 0.0)
    scale = float(np.mean(sizes - slope * distances))
  return max(scale, MIN_SCALE), slope


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
