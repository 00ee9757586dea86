"""Rolling-origin backtests of every applicable law form: nominal vs empirical coverage of the
calibrated intervals and mean |relative error| by extrapolation distance, one JSON line per
(data set, form, nominal coverage).

  python benchmarks/backtest_coverage.py [DATA_NAME ...]
"""

import json
import sys

import numpy as np

from jaxscale.scaling.analysis import backtest
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


if __name__ == '__main__':
  main(sys.argv[1:])
