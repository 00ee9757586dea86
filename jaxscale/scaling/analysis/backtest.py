"""Rolling-origin backtests by compute: fit on budgets up to C_k, predict every budget above it.

For each origin k with at least `MIN_TRAIN_BUDGETS` budgets below it, a law form is fitted to the
runs of budgets 1..k and predicts the runs of budgets k+1.. (frontier forms: each budget's best
run). Every prediction is scored at its extrapolation distance, log10(C / largest fitted C).

Coverage is scored as a user would meet it: the interval for a prediction made at origin k is
calibrated (`calibration`) only on errors that were observable then, those of earlier origins on
runs no more expensive than C_k. Origins with no earlier errors have no interval and are not
counted in the coverage.
"""

import numpy as np

from jaxscale.scaling.analysis import calibration
from jaxscale.scaling.laws import approach2, catalog
from jaxscale.scaling.runs import table as table_lib

MIN_TRAIN_BUDGETS = 2
MIN_TRAIN_FRACTION = 0.25  # Of the runs: a law fitted to fewer says little about the rest.
MAX_ORIGINS = 6            # Spread evenly in log compute when the table has more budgets.
RATIO_BINS = (1, 2, 4, 10, 100, np.inf)  # Extrapolation ratio C / largest fitted C.


def budget_order(runs) -> tuple[np.ndarray, np.ndarray]:
  """(label per run, budgets' labels ordered by compute)."""
  labels = approach2.budget_labels(runs)
  unique = np.unique(labels)
  compute = [np.exp(np.mean(np.log(runs['C'][labels == label]))) for label in unique]
  return labels, unique[np.argsort(compute)]


def origins(runs, labels, ordered) -> list[int]:
  """Numbers of budgets fitted at each origin: at least MIN_TRAIN_BUDGETS budgets and
  MIN_TRAIN_FRACTION of the runs, at most MAX_ORIGINS origins spread evenly in log compute."""
  counts = np.cumsum([np.sum(labels == label) for label in ordered])
  candidates = [k for k in range(MIN_TRAIN_BUDGETS, len(ordered))
                if counts[k - 1] >= MIN_TRAIN_FRACTION * len(labels)]
  if len(candidates) <= MAX_ORIGINS:
    return candidates
  log_c = np.array([np.log(runs['C'][labels == ordered[k - 1]].max()) for k in candidates])
  targets = np.linspace(log_c[0], log_c[-1], MAX_ORIGINS)
  return sorted({candidates[int(np.argmin(np.abs(log_c - target)))] for target in targets})


def predictions(runs, form_name, fixed=None) -> list[dict]:
  """Per origin: {'origin': k, 'max_C': .., 'rows': [{index, C, loss, predicted, distance,
  log_error}]} or {'origin': k, 'skipped': why} when the form cannot be fitted there."""
  runs = table_lib.checked_runs(runs)
  form = catalog.get(form_name)
  labels, ordered = budget_order(runs)
  scored = catalog.best_of_budget(runs) if form.in_compute_only else np.ones(len(labels), bool)
  results = []
  for k in origins(runs, labels, ordered):
    train = np.isin(labels, ordered[:k])
    train_runs = table_lib.subset(runs, train)
    why_not = form.why_not(train_runs, fixed)
    if why_not:
      results.append({'origin': k, 'skipped': why_not})
      continue
    try:
      params = form.fit(train_runs, fixed)
    except ValueError as error:
      results.append({'origin': k, 'skipped': str(error)})
      continue
    test = np.flatnonzero(~train & scored)
    predicted = form.loss(params, table_lib.subset(runs, test))
    max_c = float(runs['C'][train].max())
    rows = [{'index': int(index), 'C': float(runs['C'][index]), 'loss': float(runs['loss'][index]),
             'predicted': float(value), 'distance': calibration.distance(runs['C'][index], max_c),
             'log_error': float(np.log(runs['loss'][index] / value))}
            for index, value in zip(test, np.atleast_1d(predicted))]
    results.append({'origin': k, 'max_C': max_c, 'params': params, 'rows': rows})
  return results


def calibration_errors(results, up_to_compute=np.inf, before_origin=None) -> tuple[list, list, list]:
  """(distances, log errors, origin of each) of finite predictions from origins before
  `before_origin`, on runs with C <= up_to_compute."""
  distances, errors, groups = [], [], []
  for result in results:
    if 'rows' not in result or (before_origin is not None and result['origin'] >= before_origin):
      continue
    for row in result['rows']:
      if row['C'] <= up_to_compute * (1 + 1e-9) and np.isfinite(row['log_error']):
        distances.append(row['distance'])
        errors.append(row['log_error'])
        groups.append(result['origin'])
  return distances, errors, groups


def score(results, nominal=calibration.NOMINAL_COVERAGE) -> dict:
  """Errors by distance and the coverage of sequentially calibrated intervals."""
  scored = []
  for result in results:
    if 'rows' not in result:
      continue
    model = _model_or_none(*calibration_errors(results, result['max_C'], result['origin']),
                           nominal)
    for row in result['rows']:
      if not np.isfinite(row['log_error']):
        continue
      inside, beyond = None, None
      if model:
        low, high = calibration.interval(model, row['predicted'], row['distance'])
        inside = bool(low <= row['loss'] <= high)
        beyond = row['distance'] > model['max_backtested_distance']
      scored.append((row['distance'], (row['predicted'] - row['loss']) / row['loss'], inside,
                     beyond))
  return summarise(scored, nominal) | {
      'num_origins': sum('rows' in result for result in results),
      'skipped_origins': [{'origin': r['origin'], 'why': r['skipped']}
                          for r in results if 'skipped' in r]}


def _model_or_none(distances, errors, groups, nominal):
  try:
    return calibration.fit(distances, errors, nominal, groups)
  except ValueError:  # None yet, or too few for a finite bound: no interval at this origin.
    return None


def summarise(scored, nominal) -> dict:
  """scored: (distance, relative error, inside interval, beyond the backtested distances)
  tuples; the last two are None where no calibrated interval could be made.

  `pi_coverage` counts intervals within the distances their calibration had backtested (what
  `predict` vouches for); beyond them `pi_coverage_beyond_backtested`, which `predict` warns of.
  """
  if not scored:
    return {'num_predictions': 0, 'nominal_coverage': nominal}
  distances, errors, inside, beyond = zip(*scored)
  ratios, errors = 10 ** np.array(distances), np.abs(np.array(errors))
  covered = [value for value, far in zip(inside, beyond) if value is not None and not far]
  covered_far = [value for value, far in zip(inside, beyond) if value is not None and far]
  by_distance = []
  for low, high in zip(RATIO_BINS[:-1], RATIO_BINS[1:]):
    members = (ratios > low) & (ratios <= high) if low > 1 else ratios <= high
    if members.any():
      bin_inside = [inside[i] for i in np.flatnonzero(members) if inside[i] is not None]
      # Coverage here mixes backtested and not: see the totals for the split.
      by_distance.append({
          'ratio': f'{low}-{high}x' if np.isfinite(high) else f'>{low}x',
          'num': int(members.sum()), 'mean_abs_relative_error': float(errors[members].mean()),
          'pi_coverage': float(np.mean(bin_inside)) if bin_inside else None})
  return {'num_predictions': len(scored), 'nominal_coverage': nominal,
          'mean_abs_relative_error': float(errors.mean()),
          'pi_coverage': float(np.mean(covered)) if covered else None,
          'num_with_interval': len(covered),
          'pi_coverage_beyond_backtested': float(np.mean(covered_far)) if covered_far else None,
          'num_beyond_backtested': len(covered_far), 'by_distance': by_distance}


def calibrate(runs, form_name, fixed=None, nominal=calibration.NOMINAL_COVERAGE):
  """The calibration model from every origin's errors (what `fit` stores for `predict`), or None
  when the table has too few budgets to hold any out."""
  return _model_or_none(*calibration_errors(predictions(runs, form_name, fixed)), nominal)
