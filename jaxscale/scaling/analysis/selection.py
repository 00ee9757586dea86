"""`fit`'s record with what a backtest adds: calibrated intervals, degenerate-fit flags, and for
`--law auto` the law form that backtested best, with the reason.

Forms are compared on the predictions they all make: each held-out budget's best run, at every
rolling origin where all of them could be fitted (`backtest`). The lowest mean |relative error|
wins, except that a form with fewer parameters within `TIE_MARGIN` of it wins instead: with
the data unable to tell them apart, the simpler law extrapolates more safely. A form whose fit to
all the runs is degenerate (`degenerate`: E at or above the least observed loss, an exponent at
a bound) is passed over for the next best that is not, and the reason says so.
"""

import numpy as np

from jaxscale.scaling.analysis import backtest, calibration
from jaxscale.scaling.laws import approach2, approach3, catalog, degenerate, fits
from jaxscale.scaling.runs import table as table_lib

TIE_MARGIN = 0.1  # Relative: within 10% of the best error counts as a tie.


def fit(runs, law='chinchilla', approach=3, fixed=None, offset=True, num_bootstrap=1000, seed=0,
        nominal=calibration.NOMINAL_COVERAGE, weight_by_stderr=False) -> dict:
  runs = table_lib.checked_runs(runs)
  selection = None
  if law == 'auto' and weight_by_stderr:
    raise ValueError('--weight-by-stderr applies to --law chinchilla --approach 3 only.')
  if law == 'auto':
    selection = choose(runs, fixed, nominal)
    record = fit_form(runs, selection['chosen'], fixed, num_bootstrap, seed)
  else:
    record = fits.fit_runs(runs, law, approach, fixed, offset, num_bootstrap, seed,
                           weight_by_stderr)
  form = selection['chosen'] if selection else form_of(record)
  record['form'] = form
  if selection:
    record['selection'] = selection
  if form:
    model = backtest.calibrate(runs, form, fixed, nominal)
    record['calibration'] = model or {
        'method': 'none', 'note': f'too few compute budgets to backtest this form at '
                                  f'{nominal:.0%} coverage (it needs '
                                  f'{calibration.min_errors(nominal)} out-of-sample errors)'}
  record['fitted_min_C'] = float(runs['C'].min())
  record['fitted_max_C'] = float(runs['C'].max())
  record['degenerate'] = degenerate.flags(degenerate.frontier_params(record),
                                          float(runs['loss'].min()), record.get('fixed'))
  return record


def form_of(record) -> str | None:
  """The catalog form a fit record is (None: Approach 1 and Kaplan's three laws)."""
  pinned_e = (record.get('fixed') or {}).get('E')
  if record['law'] in ('kaplan_nd', 'data_constrained'):
    return 'kaplan' if record['law'] == 'kaplan_nd' else 'data_constrained'
  if record['law'] != 'chinchilla' or record.get('approach') == 1:
    return None
  if record['approach'] == 3:
    return 'chinchilla' if pinned_e is None else 'chinchilla_fixed_E'
  return 'power_law' if pinned_e == 0 else 'frontier'


def fit_form(runs, name, fixed, num_bootstrap, seed) -> dict:
  """The fit.json record of a catalog form (Approach 2 and 3 records where they are one)."""
  fixed = dict(fixed or {})
  if name == 'chinchilla':
    return approach3.fit(runs, fixed, num_bootstrap=num_bootstrap, seed=seed)
  if name == 'chinchilla_fixed_E':
    return approach3.fit(runs, {**fixed, 'E': catalog.known_min_loss(runs, fixed)},
                         num_bootstrap=num_bootstrap, seed=seed)
  if name in ('frontier', 'power_law'):
    fixed = {'E': 0.0} if name == 'power_law' else fixed
    return approach2.fit(runs, fixed, num_bootstrap=num_bootstrap, seed=seed)
  params = catalog.get(name).fit(runs, fixed)
  return {'law': 'kaplan_nd' if name == 'kaplan' else name, **params, 'fixed': fixed,
          'num_points': table_lib.num_rows(runs),
          'flops_per_param_token': table_lib.flops_per_param_token(runs)}


def choose(runs, fixed=None, nominal=calibration.NOMINAL_COVERAGE) -> dict:
  """{'chosen': form, 'why': sentence, 'candidates': {form: scores or why not}}.

  Among forms tied on error, one whose backtest gives enough errors to calibrate a `nominal`
  interval is preferred to one that cannot state an interval, then the one with fewer
  parameters."""
  candidates, predictions, num_errors = {}, {}, {}
  for name, form in catalog.FORMS.items():
    why_not = form.why_not(runs, fixed)
    if why_not:
      candidates[name] = {'skipped': why_not}
      continue
    results = backtest.predictions(runs, name, fixed)
    predictions[name] = _best_run_predictions(runs, results)
    num_errors[name] = len(backtest.calibration_errors(results)[1])
    if not predictions[name]:
      candidates[name] = {'skipped': 'no rolling origin where it could be fitted'}
      del predictions[name]
  if not predictions:
    raise ValueError('No law form could be backtested: the runs need 3 or more compute budgets.')
  common = set.intersection(*(set(keyed) for keyed in predictions.values()))
  if not common:
    raise ValueError('The law forms share no backtested prediction to compare them on.')
  for name, keyed in predictions.items():
    errors = [abs(keyed[key]) for key in common]
    candidates[name] = {'mean_abs_relative_error': float(np.mean(errors)),
                        'num_predictions': len(errors),
                        'num_params': catalog.FORMS[name].num_params,
                        'num_backtest_errors': num_errors[name],
                        'calibrated': num_errors[name] >= calibration.min_errors(nominal)}
  scored = {name: c for name, c in candidates.items() if 'skipped' not in c}
  passed_over = []
  while True:
    chosen, why = _rank_first(scored, len(common))
    flags = _degenerate_flags(runs, chosen, fixed)
    if not flags:
      break
    candidates[chosen]['degenerate'] = flags
    passed_over.append(f'{chosen} (its fit to all runs is degenerate: {flags[0]})')
    if len(scored) == 1:
      why += '; every form that backtested has a degenerate fit, so this one is kept anyway'
      break
    scored = {name: c for name, c in scored.items() if name != chosen}
  if passed_over:
    why += '; passed over: ' + '; '.join(passed_over)
  return {'chosen': chosen, 'why': why, 'candidates': candidates}


def _rank_first(scored, num_common) -> tuple[str, str]:
  """The form the tie rule picks among `scored`, and the sentence that says why."""
  best = min(scored, key=lambda name: scored[name]['mean_abs_relative_error'])
  best_error = scored[best]['mean_abs_relative_error']
  tied = [name for name, c in scored.items()
          if c['mean_abs_relative_error'] <= best_error * (1 + TIE_MARGIN)]
  chosen = min(tied, key=lambda name: (not scored[name]['calibrated'],
                                       scored[name]['num_params'],
                                       scored[name]['mean_abs_relative_error']))
  error = scored[chosen]['mean_abs_relative_error']
  why = (f'{chosen}: lowest backtested error, mean |relative error| {error:.3%} over '
         f'{num_common} out-of-sample predictions (each held-out budget\'s best run)')
  if chosen != best:
    reason = (f'with fewer parameters ({scored[chosen]["num_params"]} vs '
              f'{scored[best]["num_params"]})'
              if scored[best]['calibrated'] or not scored[chosen]['calibrated'] else
              f'and enough backtest errors ({scored[chosen]["num_backtest_errors"]}) for a '
              f'calibrated interval, which {best} ({scored[best]["num_backtest_errors"]}) lacks')
    why = (f'{chosen}: backtested mean |relative error| {error:.3%}, within {TIE_MARGIN:.0%} of '
           f'the lowest ({best}, {best_error:.3%}) {reason}, over '
           f'{num_common} out-of-sample predictions')
  return chosen, why


def _degenerate_flags(runs, name, fixed) -> list[str]:
  """`degenerate.flags` of form `name` fitted to all of `runs` (pinned parameters not judged)."""
  pinned = dict(fixed or {})
  if name == 'chinchilla_fixed_E':
    pinned['E'] = catalog.known_min_loss(runs, fixed)
  elif name == 'power_law':
    pinned['E'] = 0.0
  try:
    params = catalog.get(name).fit(runs, fixed)
  except ValueError as error:
    return [f'the fit failed ({error})']
  return degenerate.flags(params, float(runs['loss'].min()), pinned)


def _best_run_predictions(runs, results) -> dict:
  """{(origin, run index): relative error} on each held-out budget's best run."""
  best = catalog.best_of_budget(runs)
  return {(result['origin'], row['index']): (row['predicted'] - row['loss']) / row['loss']
          for result in results if 'rows' in result
          for row in result['rows'] if best[row['index']] and np.isfinite(row['log_error'])}
