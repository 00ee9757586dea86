"""Predictions from a fit.json: a bootstrap interval (ci) from the resamples it stores and, where
`fit` could backtest the law, a prediction interval (pi) calibrated on the backtest's errors at
the request's extrapolation distance (`calibration`), with that distance and a warning when it
lies beyond anything backtested."""

import numpy as np
import scipy.optimize

from jaxscale.scaling.analysis import calibration
from jaxscale.scaling.laws import allocation, approach3, curve_fit, fits, power_law_fit
from jaxscale.scaling.solvers import intervals


def at_compute(record: dict, compute: float) -> dict:
  """Compute-optimal N_opt, D_opt and the loss they reach with `compute` FLOPs."""
  return with_calibrated_interval(record, _at_compute(record, compute), compute)


def at_size(record: dict, n=None, d=None) -> dict:
  """Loss of a model of N parameters trained on D tokens (Kaplan laws take either alone)."""
  result = _at_size(record, n, d)
  if n is None or d is None:
    return result
  return with_calibrated_interval(record, result, record.get('flops_per_param_token', 6.0) * n * d)


def with_calibrated_interval(record, result, compute) -> dict:
  """`result` plus the calibrated pi on its loss, and where `compute` lies: the ratio to the
  largest fitted compute, and whether backtests went that far."""
  result = {**result, **compute_range(record, compute)}
  model = record.get('calibration') or {}
  if 'quantile' not in model or not np.isfinite(result.get('loss', np.nan)):
    if model.get('note'):
      result['pi_method'] = f'none: {model["note"]}'
    return result
  distance = calibration.distance(compute, record['fitted_max_C'])
  return {**result, 'pi': calibration.interval(model, result['loss'], distance),
          **calibration.describe(model, distance)}


def compute_range(record, compute) -> dict:
  """Where `compute` lies against the fitted runs: its ratio to the largest fitted compute and a
  sentence saying how far beyond (or inside) the fitted range it is."""
  low, high = record.get('fitted_min_C'), record.get('fitted_max_C')
  if not high or not np.isfinite(compute) or compute <= 0:
    return {}
  ratio = float(compute / high)
  span = f'the fitted runs span {low:.3g} to {high:.3g} FLOPs' if low else (
      f'the largest fitted run used {high:.3g} FLOPs')
  if ratio > 1:
    where = (f'{compute:.3g} FLOPs is {ratio:.3g}x the largest fitted compute '
             f'({np.log10(ratio):.2f} decades beyond; {span})')
  elif low and compute < low:
    where = f'{compute:.3g} FLOPs is below the fitted range ({span})'
  else:
    where = f'{compute:.3g} FLOPs is inside the fitted range ({span})'
  return {'extrapolation_ratio': ratio, 'compute_range': where}


def _at_compute(record, compute):
  if record['law'] == 'kaplan':
    return _kaplan(record, 'C', compute)
  if record['law'] in NUMERIC_LAWS:
    return _numeric_optimum(record, compute)
  if record['approach'] == 3:
    def optimum(params):
      n_opt, d_opt = approach3.compute_optimal(params, compute, record['flops_per_param_token'])
      return {'N_opt': n_opt, 'D_opt': d_opt, 'loss': approach3.loss(params, n_opt, d_opt)}
  else:
    def optimum(params):
      n_opt, d_opt = allocation.optimal_sizes(params, compute)
      frontier = {name: params.get(f'frontier.{name}', np.nan) for name in ('E', 'k', 'gamma')}
      return {'N_opt': n_opt, 'D_opt': d_opt, 'loss': power_law_fit.evaluate(frontier, compute)}
  return {'C': compute, **_with_interval(_flat_params(record), fits.bootstrap_samples(record),
                                         optimum, record)}


def _at_size(record, n, d):
  if record['law'] in NUMERIC_LAWS:
    if n is None or d is None:
      raise ValueError(f'A {record["law"]} fit predicts from --N and --D together.')
    return {'N': n, 'D': d, 'loss': float(NUMERIC_LAWS[record['law']](record, n, d))}
  if record['law'] == 'kaplan':
    if (n is None) == (d is None):
      raise ValueError('A Kaplan fit predicts from --N or from --D, not both (no joint law).')
    return _kaplan(record, 'N', n) if n is not None else _kaplan(record, 'D', d)
  if record.get('approach') != 3 or n is None or d is None:
    raise ValueError('Loss at given --N and --D needs both, and an Approach 3 (parametric) fit.')
  predict = lambda params: {'loss': approach3.loss(params, n, d)}
  return {'N': n, 'D': d, **_with_interval(record, fits.bootstrap_samples(record), predict, record)}


def _kaplan(record, variable, value) -> dict:
  law = record[f'L({variable})']
  predict = lambda params: {'loss': power_law_fit.evaluate(params, value)}
  return {variable: value, **_with_interval(law, fits.bootstrap_samples(law), predict, law)}


def _with_interval(params, samples, predict, record) -> dict:
  result = {name: float(value) for name, value in predict(params).items()}
  if samples:
    predictions = [predict(sample) for sample in samples]
    confidence = record.get('confidence', intervals.CONFIDENCE)
    result['confidence'] = confidence
    result['ci'] = {name: intervals.percentile_interval([p[name] for p in predictions], confidence)
                    for name in result if name != 'confidence'}
  return result


def _flat_params(record) -> dict:
  """Approach 1/2 records nest the loss frontier; bootstrap samples name it 'frontier.E' etc."""
  frontier = record.get('frontier') or {}
  return {**record, **{f'frontier.{name}': value for name, value in frontier.items()}}


# Laws with no closed-form compute optimum: loss(record, N, D), minimised numerically over N.
# Kaplan's N is non-embedding; the data-constrained law at a budget assumes fresh tokens.
NUMERIC_LAWS = {
    'kaplan_nd': lambda record, n, d: curve_fit.kaplan_loss(record, n, d),
    'data_constrained': lambda record, n, d: curve_fit.data_constrained_loss(record, n, d, d),
}


def _numeric_optimum(record, compute) -> dict:
  loss = NUMERIC_LAWS[record['law']]
  tokens_times_params = compute / record.get('flops_per_param_token', 6.0)
  objective = lambda log_n: float(loss(record, np.exp(log_n), tokens_times_params / np.exp(log_n)))
  log_total = np.log(tokens_times_params)
  found = scipy.optimize.minimize_scalar(objective, bounds=(0.1 * log_total, 0.9 * log_total),
                                         method='bounded')
  n_opt = float(np.exp(found.x))
  return {'C': compute, 'N_opt': n_opt, 'D_opt': tokens_times_params / n_opt,
          'loss': float(found.fun)}
