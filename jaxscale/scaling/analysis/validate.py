"""Does the law extrapolate? Fit on the cheaper runs, predict the held-out most expensive ones.

The held-out set is the largest-compute fraction of runs, widened so that no compute budget is
split between the two sides. Each held-out run gets its predicted loss with two intervals:
  ci: parameter uncertainty only (bootstrap of the fit);
  pi: that plus run-to-run scatter (a training residual, in log loss, drawn for each resample),
      the interval a single new run should fall in.
"""

import numpy as np

from jaxscale.scaling.laws import approach3
from jaxscale.scaling.laws import envelope
from jaxscale.scaling.laws import fits
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import intervals

HOLDOUT_FRACTION = 0.2


def validate(runs, holdout_fraction=HOLDOUT_FRACTION, fixed=None, num_bootstrap=1000,
             seed=0) -> dict:
  runs = table_lib.checked_runs(runs)
  held_out = holdout_mask(runs['C'], holdout_fraction)
  train, test = table_lib.subset(runs, ~held_out), table_lib.subset(runs, held_out)
  record = approach3.fit(train, fixed, num_bootstrap=num_bootstrap, seed=seed)
  samples = fits.bootstrap_samples(record)
  residuals = np.log(train['loss']) - np.log(approach3.loss(record, train['N'], train['D']))
  rng = np.random.default_rng(seed)
  rows = []
  for index in range(table_lib.num_rows(test)):
    rows.append(_check_run(record, samples, residuals, rng, test, index))
  errors = np.array([row['relative_error'] for row in rows])
  summary = {
      'num_train': table_lib.num_rows(train), 'num_held_out': len(rows),
      'train_max_C': float(train['C'].max()), 'held_out_min_C': float(test['C'].min()),
      'mean_abs_relative_error': float(np.mean(np.abs(errors))),
      'max_abs_relative_error': float(np.max(np.abs(errors))),
  }
  if samples:
    summary['ci_coverage'] = float(np.mean([row['inside_ci'] for row in rows]))
    summary['pi_coverage'] = float(np.mean([row['inside_pi'] for row in rows]))
  fitted = {name: record[name] for name in approach3.SPEC.param_names + ('a', 'b')}
  return {'summary': summary, 'fit': fitted, 'held_out': rows}


def holdout_mask(compute, fraction) -> np.ndarray:
  """The largest-compute `fraction` of runs (at least one), whole budgets at a time."""
  if not 0 < fraction < 1:
    raise ValueError(f'The held-out fraction must lie in (0, 1); got {fraction}.')
  labels = envelope.bin_relative(compute, 0.05)
  threshold = np.quantile(compute, 1 - fraction)
  held_labels = np.unique(labels[compute >= threshold])
  mask = np.isin(labels, held_labels)
  if mask.all():
    raise ValueError('All runs share the largest compute budget; nothing is left to fit on.')
  return mask


def _check_run(record, samples, residuals, rng, test, index) -> dict:
  n, d, loss = test['N'][index], test['D'][index], test['loss'][index]
  predicted = float(approach3.loss(record, n, d))
  row = {'N': float(n), 'D': float(d), 'C': float(test['C'][index]), 'loss': float(loss),
         'predicted': predicted, 'relative_error': (predicted - loss) / loss}
  if 'run' in test:
    row = {'run': str(test['run'][index]), **row}
  if samples:
    draws = np.array([approach3.loss(sample, n, d) for sample in samples])
    noisy = draws * np.exp(rng.choice(residuals, size=len(draws)))
    row['ci'] = intervals.percentile_interval(draws, record['confidence'])
    row['pi'] = intervals.percentile_interval(noisy, record['confidence'])
    row['inside_ci'] = bool(row['ci'][0] <= loss <= row['ci'][1])
    row['inside_pi'] = bool(row['pi'][0] <= loss <= row['pi'][1])
  return row
