"""Predictions from a fit.json, each with a bootstrap interval from the resamples it stores."""

import numpy as np

from jaxscale.scaling.laws import allocation
from jaxscale.scaling.laws import approach3
from jaxscale.scaling.laws import fits
from jaxscale.scaling.laws import power_law_fit
from jaxscale.scaling.solvers import intervals


def at_compute(record: dict, compute: float) -> dict:
  """Compute-optimal N_opt, D_opt and the loss they reach with `compute` FLOPs."""
  if record['law'] == 'kaplan':
    return _kaplan(record, 'C', compute)
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


def at_size(record: dict, n=None, d=None) -> dict:
  """Loss of a model of N parameters trained on D tokens (Kaplan laws take either alone)."""
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
