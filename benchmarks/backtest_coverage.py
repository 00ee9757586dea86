"""Rolling-origin backtests of every applicable law form: nominal vs empirical coverage of the
calibrated intervals and mean |relative error| by extrapolation distance, one JSON line per
(data set, form, nominal coverage).

  python benchmarks/backtest_coverage.py [DATA_NAME ...]

With --validate, instead one markdown table row per data set from `validate --holdout-fraction
0.25 --bootstrap 200` (fit on the cheapest 75% of runs by compute, law chosen by `--law auto`):
runs, compute range, mean |relative error| of the held-out runs, coverage and median half-width
of their 95% prediction intervals, the backtest's coverage, and the wall time. The table in
docs/scaling_laws_accuracy.md comes from

  python benchmarks/backtest_coverage.py --validate
"""

import json
import sys
import time

import numpy as np

from jaxscale.scaling.analysis import backtest, validate
from jaxscale.scaling.laws import catalog
from jaxscale.scaling.runs import data_files, synthetic

BUDGETS = np.geomspace(1e17, 1e21, 8)
DATA = {
    'chinchilla_fig4': lambda: data_files.chinchilla_fig4(),
    'synthetic_chinchilla': lambda: synthetic.isoflop_runs(
        budgets=BUDGETS, sizes_per_budget=6, noise=0.01, seed=1),
    'synthetic_frontier': lambda: synthetic.frontier_runs(
        budgets=BUDGETS, sizes_per_budget=5, noise=0.003, seed=2),
}
# Ladders for --validate: the shipped Chinchilla data, and synthetic laws with known noise.
VALIDATE_DATA = {
    'chinchilla_fig4': DATA['chinchilla_fig4'],
    'synthetic Hoffmann law, 0.5% noise, 8x6': lambda: synthetic.isoflop_runs(
        budgets=BUDGETS, sizes_per_budget=6, noise=0.005, seed=11),
    'synthetic Hoffmann law, 1% noise, 8x6': DATA['synthetic_chinchilla'],
    'synthetic Hoffmann law, 2% noise, 10x10': lambda: synthetic.isoflop_runs(
        budgets=np.geomspace(1e17, 1e21, 10), sizes_per_budget=10, noise=0.02, seed=12),
    'synthetic frontier law (no L(N, D) form fits it), 0.3% noise': DATA['synthetic_frontier'],
}


def main(names):
  for data_name, make in DATA.items():
    if names and data_name not in names:
      continue
    runs = make()
    for form in catalog.FORMS:
      if catalog.get(form).why_not(runs, None):
        continue
      results = backtest.predictions(runs, form)
      if not any('rows' in result for result in results):
        print(json.dumps({'data': data_name, 'form': form, 'skipped': results[0]['skipped']}))
        continue
      for nominal in (0.8, 0.95):
        scores = backtest.score(results, nominal)
        print(json.dumps({
            'data': data_name, 'form': form, 'nominal_coverage': nominal,
            **{key: scores.get(key) for key in (
                'pi_coverage', 'num_with_interval', 'pi_coverage_beyond_backtested',
                'num_beyond_backtested', 'mean_abs_relative_error', 'num_predictions',
                'num_origins')},
            'by_distance': [(row['ratio'], row['num'], round(row['mean_abs_relative_error'], 4))
                            for row in scores['by_distance']]}), flush=True)



def validate_rows(names):
  """One markdown row per (data set, law): `--law auto`, and Approach 3 (chinchilla) where auto
  chose another form."""
  print('| data | runs | compute range (FLOPs) | law | mean abs error, held out | '
        'coverage of 95% PI, held out | median PI half-width | backtest PI coverage | time |')
  print('|---|---|---|---|---|---|---|---|---|')
  for data_name, make in VALIDATE_DATA.items():
    if names and data_name not in names:
      continue
    runs = make()
    c = np.asarray(runs['C'], float) if 'C' in runs else 6 * runs['N'] * runs['D']
    for law in ('auto', 'chinchilla'):
      start = time.time()
      report = validate.validate(runs, 0.25, None, 200, 0, law)
      seconds = time.time() - start
      s = report['summary']
      pct = lambda value: '-' if value is None else f'{100 * value:.1f}%'
      label = f'auto: {s["law"]}' if law == 'auto' else s['law']
      print(f'| {data_name} | {len(runs["loss"])} | {c.min():.2g} to {c.max():.2g} | {label} | '
            f'{pct(s["mean_abs_relative_error"])} | {pct(s.get("pi_coverage"))} '
            f'({s["num_held_out"]} runs) | {pct(s.get("median_pi_half_width"))} | '
            f'{pct(report["backtest"].get("pi_coverage"))} | {seconds:.0f} s |', flush=True)
      if law == 'auto' and s['law'] == 'chinchilla':
        break


if __name__ == '__main__':
  if '--validate' in sys.argv[1:]:
    validate_rows([name for name in sys.argv[1:] if name != '--validate'])
  else:
    main(sys.argv[1:])
