"""Rolling backtests, calibrated intervals, law-form selection and degenerate-fit flags, on runs
drawn from known laws."""

import json

import numpy as np
import pytest

from jaxscale.scaling import cli
from jaxscale.scaling.analysis import backtest, calibration, selection
from jaxscale.scaling.laws import approach2, degenerate, power_law_fit
from jaxscale.scaling.runs import synthetic, table

BUDGETS = np.geomspace(1e17, 1e21, 8)


@pytest.fixture(scope='module')
def chinchilla_backtest():
  runs = synthetic.isoflop_runs(budgets=BUDGETS, sizes_per_budget=6, noise=0.01, seed=1)
  return backtest.predictions(runs, 'chinchilla')


@pytest.mark.parametrize('nominal', [0.8, 0.95])
def test_rolling_backtest_coverage_is_near_nominal(chinchilla_backtest, nominal):
  scores = backtest.score(chinchilla_backtest, nominal)
  assert scores['num_origins'] >= 4 and scores['num_with_interval'] >= 20
  # Cross-fitted by origin (the error model never scores its own errors): near nominal, and if
  # off, on the safe side.
  assert nominal - 0.10 <= scores['pi_coverage'] <= nominal + 0.15, scores
  distances = [row['ratio'] for row in scores['by_distance']]
  assert distances[0].startswith('1-') or distances[0].startswith('2-')


def test_errors_grow_with_extrapolation_distance(chinchilla_backtest):
  by_distance = backtest.score(chinchilla_backtest)['by_distance']
  assert by_distance[-1]['mean_abs_relative_error'] > by_distance[0]['mean_abs_relative_error']


def test_misspecified_law_gets_wider_intervals_not_falsely_narrow_ones():
  """A pure power law fitted to losses with an offset: its backtest errors are large, so its
  calibrated interval is wider than the true form's, and far wider than its own bootstrap's."""
  runs = synthetic.frontier_runs(budgets=BUDGETS, sizes_per_budget=5, noise=0.003, seed=2)
  nominal, distance = 0.8, 1.0  # Predicting 10x the largest fitted compute.
  wrong = backtest.calibrate(runs, 'power_law', nominal=nominal)
  right = backtest.calibrate(runs, 'frontier', nominal=nominal)
  wrong_width = np.diff(calibration.interval(wrong, 1.0, distance))[0]
  right_width = np.diff(calibration.interval(right, 1.0, distance))[0]
  assert wrong_width > 1.5 * right_width
  record = approach2.fit(runs, {'E': 0.0}, num_bootstrap=100)
  frontier = [power_law_fit.evaluate({'E': 0.0, 'k': k, 'gamma': g}, 10 * runs['C'].max())
              for k, g in zip(record['bootstrap']['frontier.k'],
                              record['bootstrap']['frontier.gamma'])]
  low, high = np.percentile(frontier, [10, 90])
  assert wrong_width > 3 * (high - low) / np.median(frontier)


def _with_column(runs, name, values):
  return {**runs, name: np.broadcast_to(values, runs['N'].shape).astype(float)}


SYNTHETIC_FORMS = {
    'frontier': lambda: synthetic.frontier_runs(budgets=BUDGETS, curvature=0.1, seed=3),
    'power_law': lambda: synthetic.frontier_runs(
        {'E': 0.0, 'k': 60.0, 'gamma': 0.08}, budgets=BUDGETS, curvature=0.1, seed=4),
    'chinchilla': lambda: _with_column(synthetic.grid_runs(
        sizes=np.geomspace(1e7, 1e9, 4), tokens=np.geomspace(1e9, 1e11, 4), noise=0.003,
        seed=1), 'N_nonembed', 1.0),
    'kaplan': lambda: synthetic.kaplan_grid_runs(
        sizes=np.geomspace(1e6, 1e9, 4), tokens=np.geomspace(1e8, 1e11, 5), seed=5),
    'data_constrained': lambda: synthetic.repeated_data_runs(
        sizes=np.geomspace(1e7, 1e9, 4), tokens=np.geomspace(1e9, 3e11, 5), seed=6),
}


@pytest.mark.parametrize('form', [
    'frontier', 'power_law',
    pytest.param('chinchilla', marks=pytest.mark.slow),
    pytest.param('kaplan', marks=pytest.mark.slow),
    pytest.param('data_constrained', marks=pytest.mark.slow)])
def test_auto_picks_the_true_form(form):
  runs = SYNTHETIC_FORMS[form]()
  if form == 'chinchilla':  # Kaplan's form competes (it needs N_nonembed).
    runs['N_nonembed'] = runs['N']
  chosen = selection.choose(runs)
  assert chosen['chosen'] == form, chosen
  assert form in chosen['why'] and 'backtested' in chosen['why']
  compared = [name for name, c in chosen['candidates'].items() if 'skipped' not in c]
  assert len(compared) >= 2, chosen  # A real choice, not the only form that applied.


def test_degenerate_fits_are_flagged():
  healthy = {'E': 1.7, 'A': 400, 'B': 400, 'alpha': 0.34, 'beta': 0.28}
  assert degenerate.flags(healthy, min_loss=2.0) == []
  collapsed = degenerate.flags({**healthy, 'E': 2e-111}, min_loss=2.0)
  assert len(collapsed) == 1 and 'collapsed to zero' in collapsed[0]
  above = degenerate.flags({**healthy, 'E': 3.65, 'alpha': 1.17}, min_loss=3.5)
  assert any('alpha' in flag for flag in above) and any('above' in flag for flag in above)
  assert degenerate.flags({**healthy, 'E': 0.0}, min_loss=2.0, fixed={'E': 0.0}) == []


def test_cli_flags_a_degenerate_fit_and_predict_reports_distance(tmp_path, capsys):
  # Losses that stop improving: the fitted E sits at the data's least loss.
  runs = synthetic.isoflop_runs(budgets=BUDGETS[:5], sizes_per_budget=5, noise=0.002, seed=8)
  runs['loss'] = np.maximum(runs['loss'], np.percentile(runs['loss'], 60))
  path = tmp_path / 'runs.csv'
  columns = list(runs)
  table.write_csv(path, [dict(zip(columns, v)) for v in zip(*runs.values())], columns)
  code = cli.main(['fit', '--csv', str(path), '--out', str(tmp_path / 'fit.json'),
                   '--bootstrap', '0', '--coverage', '0.8'])
  captured = capsys.readouterr()
  record = json.loads((tmp_path / 'fit.json').read_text())
  assert code == 0 and record['degenerate'], record
  assert 'warning: degenerate fit' in captured.err
  assert record['calibration']['nominal_coverage'] == 0.8
  code = cli.main(['predict', '--fit', str(tmp_path / 'fit.json'), '--compute',
                   str(1e6 * runs['C'].max())])
  captured = capsys.readouterr()
  result = json.loads(captured.out)
  assert result['extrapolation_ratio'] == pytest.approx(1e6)
  assert result['beyond_backtested'] and 'untested' in captured.err
  assert result['pi'][0] < result['loss'] < result['pi'][1]
