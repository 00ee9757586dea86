"""Predict, then verify: fit a sweep, run its compute-optimal config at a new budget, score it.

`verify(DIR, C)` works in DIR/verify/C<budget>/:
  1. collects DIR's finished runs (runs.csv) and fits them (fit.json, with its calibrated
     interval), then emits the compute-optimal run for C (config.py, as `predict --emit-config`)
     and plans it as a one-run sweep (sweep.json). All of this happens once: a second call finds
     them and keeps the prediction made before the run, whatever DIR has gained since.
  2. trains it with the sweep launcher (resumable: a finished run is not run again);
  3. appends one row to DIR/verify.jsonl: predicted vs actual eval loss, inside the interval or
     not, and, where the data source knows its least loss (markov), the fitted E against it.
"""

import datetime
import json
import os

from jaxscale.scaling.analysis import predict, selection
from jaxscale.scaling.laws import fits
from jaxscale.scaling.runs import collect, table as table_lib
from jaxscale.scaling.sweeps import emit_config, launcher, sweep as sweep_lib

LEDGER = 'verify.jsonl'


def work_dir(sweep_dir, budget) -> str:
  return os.path.join(sweep_dir, 'verify', f'C{budget:.3g}'.replace('+', ''))


def verify(sweep_dir, budget, fit_options: dict, parallel=1, stream=None) -> dict:
  """The ledger row (also appended to DIR/verify.jsonl). `fit_options` are selection.fit's."""
  out = work_dir(sweep_dir, budget)
  if not os.path.exists(os.path.join(out, 'sweep.json')):
    _predict(sweep_dir, budget, fit_options, out)
  result = launcher.run_all(out, parallel, stream)
  if result['failed']:
    raise RuntimeError(f'The verification run failed; its log: {launcher.log_path(_run_dir(out))}')
  row = score(fits.load(os.path.join(out, 'fit.json')), sweep_lib.load(out)['runs'][0],
              launcher.read_summary(_run_dir(out)))
  with open(os.path.join(sweep_dir, LEDGER), 'a') as f:
    f.write(json.dumps(row) + '\n')
  return row


def _predict(sweep_dir, budget, fit_options, out) -> None:
  os.makedirs(out, exist_ok=True)
  rows, _ = collect.collect(sweep_dir)
  runs_path, fit_path = os.path.join(out, 'runs.csv'), os.path.join(out, 'fit.json')
  collect.write(rows, runs_path)
  record = selection.fit(table_lib.read_csv(runs_path), **fit_options)
  fits.save(fits.jsonable(record), fit_path)
  run = emit_config.compute_optimal_run(fits.load(fit_path), sweep_dir, budget)
  emit_config.write(run, os.path.join(out, 'config.py'), fit_path, sweep_dir)
  planned = {key: value for key, value in run.items() if key not in ('base_config', 'prediction')}
  sweep = sweep_lib.load(sweep_dir)
  with open(os.path.join(out, 'sweep.json'), 'w') as f:
    json.dump({**sweep, 'runs': [planned]}, f, indent=1)


def score(record, run, summary) -> dict:
  """Predicted (at the run's own N and D where the law takes them) vs actual."""
  try:
    prediction = predict.at_size(record, run['N'], run['D'])
  except ValueError:  # Frontier laws know only compute.
    prediction = predict.at_compute(record, run['C'])
  interval, method = prediction.get('pi'), prediction.get('pi_method')
  if interval is None and 'ci' in prediction:
    interval, method = prediction['ci']['loss'], 'bootstrap ci (no calibrated interval)'
  actual = summary['eval_loss']
  row = {'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
         'budget': run['budget'], 'run': run['name'], 'N': run['N'], 'D': run['D'],
         'C': summary.get('flops_seen', run['C']), 'law': record.get('form') or record['law'],
         'predicted_loss': prediction['loss'], 'actual_loss': actual,
         'relative_error': (prediction['loss'] - actual) / actual,
         'interval': interval, 'interval_method': method,
         'inside': None if interval is None else bool(interval[0] <= actual <= interval[1]),
         'extrapolation_ratio': prediction.get('extrapolation_ratio'),
         'degenerate': record.get('degenerate', [])}
  fitted_e = fitted_offset(record)
  truth = summary.get('dataset_min_loss')
  if fitted_e is not None:
    row['fitted_E'] = fitted_e
  if truth is not None:
    row['true_min_loss'] = truth
    if fitted_e is not None:
      row['fitted_E_minus_true'] = fitted_e - truth
  return row


def fitted_offset(record):
  """The fit's irreducible loss E (its frontier's, for Approaches 1 and 2), or None."""
  if record.get('approach') in (1, 2):
    return (record.get('frontier') or {}).get('E')
  return record.get('E')


def _run_dir(out) -> str:
  return launcher.run_dir(out, sweep_lib.load(out)['runs'][0])
