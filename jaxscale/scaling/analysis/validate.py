"""Does the law extrapolate? Backtests by compute, and the most expensive runs held out.

Two views of the same question, both in the report:
  backtest  rolling origin (`backtest`): fit on budgets up to C_k, predict those above, for every
            k; errors by extrapolation distance, and the coverage of calibrated intervals.
  held_out  the largest-compute `holdout_fraction` of runs (whole budgets), predicted from a fit
            to the rest, each with two intervals:
              ci: parameter uncertainty only (bootstrap of the fit; Approach 3 forms);
              pi: calibrated on the training runs' own backtest errors (`calibration`), the
                  interval a single new run should fall in, at `nominal_coverage`. Training
                  runs too few to backtest leave the uncalibrated interval (bootstrap draws
                  times a training residual each), and `pi_method` says so.
The summary's mean_abs_relative_error, ci_coverage and pi_coverage are those of held_out.

`law='auto'` (the CLI's default) chooses the form as `fit --law auto` does, on the training runs
only (`selection.choose`: best rolling backtest, degenerate fits passed over); the report's
`selection` says which and why.
"""

import numpy as np

from jaxscale.scaling.analysis import backtest, calibration, selection
from jaxscale.scaling.laws import approach3, catalog, envelope, fits
from jaxscale.scaling.runs import table as table_lib
from jaxscale.scaling.solvers import intervals

HOLDOUT_FRACTION = 0.2
_UNCALIBRATED = ('bootstrap draws times training residuals (uncalibrated: the training runs have '
                 'too few budgets to backtest)')


def validate(runs, holdout_fraction=HOLDOUT_FRACTION, fixed=None, num_bootstrap=1000,
             seed=0, law='chinchilla', nominal=calibration.NOMINAL_COVERAGE) -> dict:
  runs = table_lib.checked_runs(runs)
  held_out = holdout_mask(runs['C'], holdout_fraction)
  train, test = table_lib.subset(runs, ~held_out), table_lib.subset(runs, held_out)
  chosen = None
  if law == 'auto':
    try:
      chosen = selection.choose(train, fixed, nominal)
    except ValueError as error:
      chosen = {'chosen': 'chinchilla', 'why': f'chinchilla: no form could be compared on the '
                                               f'training runs ({error})'}
    chosen = {'chosen': chosen['chosen'], 'why': chosen['why'], 'on': 'the training runs only',
              **({'candidates': chosen['candidates']} if 'candidates' in chosen else {})}
    law = chosen['chosen']
  form = catalog.get(law)
  why_not = form.why_not(runs, fixed)
  if why_not:
    raise ValueError(f'Law form {law!r} does not apply to these runs: it {why_not}.')
  if form.in_compute_only:
    test = table_lib.subset(test, catalog.best_of_budget(test))
  params = form.fit(train, fixed)
  record = _bootstrap_record(train, law, fixed, num_bootstrap, seed)
  model = backtest.calibrate(train, law, fixed, nominal)
  max_c = float(train['C'].max())
  predicted = np.atleast_1d(form.loss(params, test))
  residuals = None
  if record and not model:
    residuals = np.log(train['loss']) - np.log(approach3.loss(record, train['N'], train['D']))
  rng = np.random.default_rng(seed)
  rows = [_check_run(test, index, predicted[index], record, model, max_c, residuals, rng)
          for index in range(table_lib.num_rows(test))]
  errors = np.array([row['relative_error'] for row in rows])
  summary = {
      'law': law, 'num_train': table_lib.num_rows(train), 'num_held_out': len(rows),
      'train_max_C': max_c, 'held_out_min_C': float(test['C'].min()),
      'mean_abs_relative_error': float(np.mean(np.abs(errors))),
      'max_abs_relative_error': float(np.max(np.abs(errors))),
      'median_pi_half_width': None,
      'nominal_coverage': nominal,
      'pi_method': model['method'] if model else _UNCALIBRATED if record else
                   'none: the training runs have too few budgets to backtest and calibrate on',
  }
  if record:
    summary['ci_coverage'] = float(np.mean([row['inside_ci'] for row in rows]))
  if rows and 'inside_pi' in rows[0]:
    summary['pi_coverage'] = float(np.mean([row['inside_pi'] for row in rows]))
    summary['median_pi_half_width'] = float(np.median(
        [(row['pi'][1] - row['pi'][0]) / 2 / row['loss'] for row in rows]))
  if model:
    summary['max_backtested_ratio'] = float(10 ** model['max_backtested_distance'])
  report = {'summary': summary, 'fit': params, 'held_out': rows,
            'backtest': backtest.score(backtest.predictions(runs, law, fixed), nominal)}
  if chosen:
    report['selection'] = chosen
  return report


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


def _bootstrap_record(train, law, fixed, num_bootstrap, seed):
  """Approach 3's fit with its bootstrap, for the parameter intervals (ci) of its forms."""
  if not num_bootstrap or law not in ('chinchilla', 'chinchilla_fixed_E'):
    return None
  if law == 'chinchilla_fixed_E':
    fixed = {**(fixed or {}), 'E': catalog.known_min_loss(train, fixed)}
  record = approach3.fit(train, fixed, num_bootstrap=num_bootstrap, seed=seed)
  return record if fits.bootstrap_samples(record) else None


def _check_run(test, index, predicted, record, model, max_c, residuals, rng) -> dict:
  n, d, loss, compute = (float(test[name][index]) for name in ('N', 'D', 'loss', 'C'))
  row = {'N': n, 'D': d, 'C': compute, 'loss': loss, 'predicted': float(predicted),
         'relative_error': (predicted - loss) / loss,
         'extrapolation_ratio': compute / max_c}
  if 'run' in test:
    row = {'run': str(test['run'][index]), **row}
  if record:
    draws = np.array([approach3.loss(sample, n, d) for sample in fits.bootstrap_samples(record)])
    row['ci'] = intervals.percentile_interval(draws, record['confidence'])
    row['inside_ci'] = bool(row['ci'][0] <= loss <= row['ci'][1])
  if model:
    row['pi'] = calibration.interval(model, predicted, calibration.distance(compute, max_c))
  elif residuals is not None:
    noisy = draws * np.exp(rng.choice(residuals, size=len(draws)))
    row['pi'] = intervals.percentile_interval(noisy, record['confidence'])
  if 'pi' in row:
    row['inside_pi'] = bool(row['pi'][0] <= loss <= row['pi'][1])
  return row
