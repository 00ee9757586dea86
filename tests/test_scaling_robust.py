"""Fits that hold up on other people's tables: no traceback on bad data or diverging resamples,
bootstrap refits that explore, degenerate fits passed over, column mapping, and where a
prediction lies against the fitted compute range."""

import json

import numpy as np
import pytest

from jaxscale.scaling import cli
from jaxscale.scaling.analysis import calibration, predict, selection
from jaxscale.scaling.laws import approach3, forms
from jaxscale.scaling.runs import synthetic
from jaxscale.scaling.solvers import parametric_fit


def run_cli(capsys, *argv):
  code = cli.main([str(arg) for arg in argv])
  captured = capsys.readouterr()
  return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def write_csv(path, header, rows):
  path.write_text('\n'.join([','.join(header)] + [','.join(map(str, row)) for row in rows]) + '\n')
  return path


def test_overflowing_parameters_read_as_infinite_not_a_traceback():
  theta = np.array([800.0, 5.0, 0.3, 0.3, 0.5])  # exp(800) overflows float64.
  assert forms.CHINCHILLA.to_params(theta)['A'] == float('inf')


def test_a_resample_that_diverges_from_every_start_is_dropped_and_counted():
  runs = synthetic.isoflop_runs(budgets=(1e18, 1e19, 1e20), sizes_per_budget=4, noise=0.01)
  log_x, log_y = parametric_fit.log_columns(approach3.SPEC, runs)
  best = parametric_fit.fit(approach3.SPEC, log_x, log_y, approach3.start_grid()[::50])
  weights = np.ones((3, len(log_y)))
  weights[1] = 0.0
  weights[1, :2] = 6.0  # Two distinct points for five parameters: nothing to fit.
  thetas = parametric_fit.refit_batch(best, log_x, log_y, weights)
  assert parametric_fit.num_failed(thetas) == 1 and np.isnan(thetas[1]).all()
  assert np.isfinite(thetas[[0, 2]]).all()


def test_bootstrap_refits_explore_beyond_the_full_data_optimum():
  """A resample refitted from a far-off point still reaches the optimum the profile grid finds:
  the refit does not depend on where the full-data fit happened to land."""
  runs = synthetic.isoflop_runs(noise=0.003, seed=3)
  log_x, log_y = parametric_fit.log_columns(approach3.SPEC, runs)
  best = parametric_fit.fit(approach3.SPEC, log_x, log_y, approach3.start_grid()[::20])
  stranded = parametric_fit.Fit(best.spec, np.array([0.0, 0.0, 2.0, 2.0, -3.0]), np.inf,
                                best.num_points, {})
  weights = np.ones((1, len(log_y)))
  refit = parametric_fit.refit_batch(stranded, log_x, log_y, weights)[0]
  assert approach3.SPEC.to_params(refit)['alpha'] == pytest.approx(best.params['alpha'], abs=0.02)
  assert approach3.SPEC.to_params(refit)['E'] == pytest.approx(best.params['E'], rel=0.02)


@pytest.mark.parametrize('cell, row, what', [
    ('nan', 3, 'empty or NaN'), ('', 3, 'empty or NaN'), ('-2.5', 3, 'not positive'),
    ('0', 3, 'not positive'), ('oops', 3, 'not numeric')])
def test_bad_cells_are_one_line_errors_naming_row_and_column(tmp_path, capsys, cell, row, what):
  runs = synthetic.isoflop_runs(budgets=(1e18, 1e19, 1e20), sizes_per_budget=4)
  rows = [[n, d, loss] for n, d, loss in zip(runs['N'], runs['D'], runs['loss'])]
  rows[row - 1][2] = cell
  path = write_csv(tmp_path / 'bad.csv', ['params', 'tokens', 'eval_loss'], rows)
  code, output, error = run_cli(capsys, 'fit', '--csv', path, '--out', tmp_path / 'fit.json')
  assert code == 2 and output is None
  lines = [line for line in error.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and 'Traceback' not in error
  assert "'loss'" in lines[0] and f'row {row}' in lines[0] and what in lines[0]


def test_columns_are_mapped_explicitly_or_by_common_names(tmp_path, capsys):
  runs = synthetic.isoflop_runs(budgets=(1e18, 1e19, 1e20), sizes_per_budget=5, noise=0.002)
  rows = list(zip(runs['N'], runs['D'], runs['C'], runs['loss'], runs['loss'] * 2))
  header = ['n_params', 'tokens_seen', 'flops', 'eval/loss', 'train_loss']
  path = write_csv(tmp_path / 'runs.csv', header, rows)
  code, auto, error = run_cli(capsys, 'fit', '--csv', path, '--approach', 2, '--bootstrap', 0,
                              '--out', tmp_path / 'auto.json')
  assert code == 0, error
  assert 'N=n_params, D=tokens_seen, C=flops, loss=eval/loss' in error
  code, explicit, error = run_cli(
      capsys, 'fit', '--csv', path, '--approach', 2, '--bootstrap', 0, '--columns',
      'N=n_params,D=tokens_seen,C=flops,loss=train_loss', '--out', tmp_path / 'explicit.json')
  assert code == 0 and 'loss=train_loss' in error
  minima = lambda name: [point['loss'] for point in
                         json.loads((tmp_path / name).read_text())['minima']]
  assert np.allclose(minima('explicit.json'), 2 * np.array(minima('auto.json')), rtol=1e-3)
  code, _, error = run_cli(capsys, 'fit', '--csv', path, '--columns', 'loss=nope', '--out',
                           tmp_path / 'x.json')
  assert code == 2 and "'nope'" in error


def test_auto_passes_over_a_degenerate_form_and_says_why(monkeypatch):
  runs = synthetic.frontier_runs(budgets=np.geomspace(1e17, 1e21, 6), sizes_per_budget=5,
                                 noise=0.003, seed=2)
  honest = selection.choose(runs)
  real = selection._degenerate_flags
  monkeypatch.setattr(selection, '_degenerate_flags', lambda runs, name, fixed: (
      ['E = 9 is at or above the least loss'] if name == honest['chosen'] else
      real(runs, name, fixed)))
  chosen = selection.choose(runs)
  assert chosen['chosen'] != honest['chosen']
  assert 'passed over' in chosen['why'] and honest['chosen'] in chosen['why']
  assert chosen['candidates'][honest['chosen']]['degenerate']


def test_validate_defaults_to_auto():
  args = cli._parser().parse_args(['validate', '--csv', 'runs.csv'])
  assert args.law == 'auto'


def test_predict_says_how_far_beyond_the_fitted_compute_a_request_lies():
  record = {'law': 'chinchilla', 'approach': 3, **synthetic.HOFFMANN,
            'flops_per_param_token': 6.0, 'fitted_min_C': 1e18, 'fitted_max_C': 1e20}
  far = predict.at_compute(record, 1e22)
  assert far['extrapolation_ratio'] == pytest.approx(100.0)
  assert '100x the largest fitted compute' in far['compute_range']
  assert 'inside the fitted range' in predict.at_compute(record, 1e19)['compute_range']


def test_error_model_and_quantile_rest_on_separate_errors():
  """Each error is scored against the line fitted to the other fold (never its own), the folds
  alternate along distance within each origin block, and the interval widens with distance,
  beyond the backtested reach at least in proportion to it."""
  rng = np.random.default_rng(0)
  distances = np.tile(np.linspace(0.1, 1.0, 12), 3)
  groups = np.repeat([0, 1, 2], 12)
  errors = (0.002 + 0.02 * distances) * rng.standard_normal(36)
  model = calibration.fit(distances, errors, 0.9, groups)
  assert 'cross-fitting' in model['error_model'] and model['num_blocks'] == 3
  folds = calibration._folds(distances, groups)
  for block in range(3):  # Both folds in every block, alternating along distance.
    assert set(folds[groups == block]) == {0, 1}
    assert np.all(np.diff(folds[groups == block]) != 0)
  sizes = np.abs(errors)
  scores = np.empty(36)
  for fold in (0, 1):
    scale, slope = calibration._line(distances[folds != fold], sizes[folds != fold])
    scores[folds == fold] = sizes[folds == fold] / np.maximum(scale + slope * distances[folds == fold],
                                                              calibration.MIN_SCALE)
  in_sample = sizes / np.maximum(model['scale'] + model['slope'] * distances, calibration.MIN_SCALE)
  level = np.ceil(37 * 0.9) / 36
  assert model['quantile'] == pytest.approx(np.quantile(scores, level, method='higher'))
  assert model['quantile'] != pytest.approx(np.quantile(in_sample, level, method='higher'))
  widths = [np.diff(calibration.interval(model, 1.0, d))[0] for d in (0.2, 1.0, 2.0)]
  assert widths[0] < widths[1] < widths[2]
  assert widths[2] >= 1.9 * widths[1]  # Beyond the reach: at least in proportion to distance.


# The README's tiny IsoFLOP sweep on `markov` (3 budgets x 4 sizes, as collected on 2 CPU cores):
# its Approach 3 bootstrap used to stop on OverflowError in a diverging resample.
TINY_SWEEP = (
    'N,D,C,loss',
    '7752,1550336,100015276032.0,1.890420988202095',
    '25760,493568,100071899136.0,1.7990893870592117',
    '39880,333824,99986964480.0,1.989741489291191',
    '84816,161792,99902029824.0,2.9083033204078674',
    '14712,2411520,300031672320.0,1.438858762383461',
    '39880,1001472,299960893440.0,1.3090847432613373',
    '84816,485376,299706089472.0,1.443861499428749',
    '152824,276480,300244008960.0,1.781238168478012',
    '25760,4932608,1000096137216.0,1.2275437712669373',
    '59160,2244608,999838187520.0,1.1903972625732422',
    '152824,920576,999701348352.0,1.219389259815216',
    '251784,578560,999751680000.0,1.2757750451564789',
)


def test_readme_tiny_sweep_fits_and_predicts_without_a_traceback(tmp_path, capsys):
  path = tmp_path / 'runs.csv'
  path.write_text('\n'.join(TINY_SWEEP) + '\n')
  fit_path = tmp_path / 'fit.json'
  code, summary, error = run_cli(capsys, 'fit', '--csv', path, '--law', 'chinchilla',
                                 '--approach', 3, '--out', fit_path, '--bootstrap', 30)
  assert code == 0, error
  record = json.loads(fit_path.read_text())
  assert record['num_bootstrap'] + record['bootstrap_failed'] == 30
  assert f'from {record["num_bootstrap"]}' in record['ci_basis']
  assert all(np.isfinite(value) for value in (record['E'], record['alpha'], record['beta']))
  code, result, error = run_cli(capsys, 'predict', '--fit', fit_path, '--compute', 1e13)
  assert code == 0, error
  assert result['extrapolation_ratio'] == pytest.approx(10.0, rel=0.01)
  assert 'extrapolation: 1e+13 FLOPs is 10x the largest fitted compute' in error


def test_the_tiny_sweep_resample_that_overflowed_is_refitted_or_dropped():
  """Resample 762 of the default 1000 (seed 0) ran A to exp(797) from the full-data optimum,
  which stopped `fit` with OverflowError; now it is refitted from the profile grid too, and the
  result is a finite law or a counted failure."""
  rows = [line.split(',') for line in TINY_SWEEP[1:]]
  runs = {name: np.array([float(row[i]) for row in rows]) for i, name in enumerate(
      TINY_SWEEP[0].split(','))}
  log_x, log_y = parametric_fit.log_columns(approach3.SPEC, runs)
  best = parametric_fit.fit(approach3.SPEC, log_x, log_y, approach3.start_grid())
  counts = np.array([[0, 3, 0, 0, 0, 3, 0, 1, 2, 3, 0, 0]], float)
  theta = parametric_fit.refit_batch(best, log_x, log_y, counts)[0]
  if not np.isnan(theta).all():
    params = best.resample_params(theta)
    assert all(np.isfinite(value) for value in params.values()), params


@pytest.mark.parametrize('text, message', [
    ('N,D,loss\n1e8,1e9,3.0\n1e8,1e9\n', "column 'loss'"),
    ('N,D,loss\n1e8,1e9,3.0\n1e8,1e9,3.0,7\n', 'row 2 (file line 3) has more cells'),
    ('N,D,loss\n', 'no rows'),
])
def test_ragged_and_empty_tables_are_one_line_errors(tmp_path, capsys, text, message):
  path = tmp_path / 'runs.csv'
  path.write_text(text)
  code, output, error = run_cli(capsys, 'fit', '--csv', path, '--out', tmp_path / 'fit.json')
  assert code == 2 and output is None and message in error
  assert [line.startswith('error: ') for line in error.strip().splitlines()][-1:] == [True]
  assert sum(line.startswith('error: ') for line in error.splitlines()) == 1
  assert 'Traceback' not in error


@pytest.mark.parametrize('command', [
    ['fit', '--csv', 'r.csv', '--out', 'f.json'], ['validate', '--csv', 'r.csv'],
    ['plot', '--csv', 'r.csv', '--fit', 'f.json', '--out', 'plots'],
    ['compare', '--baseline', 'a.csv', '--variant', 'b.csv']])
def test_every_table_command_takes_columns(command):
  args = cli._parser().parse_args(command + ['--columns', 'N=params,loss=eval/loss'])
  assert args.columns == 'N=params,loss=eval/loss'


def test_pinned_exponents_fit_and_bootstrap():
  """With both exponents pinned the profile grid has one point: the fit and its refits use it
  (and nothing NaN is polished)."""
  runs = synthetic.isoflop_runs(budgets=(1e18, 1e19, 1e20), sizes_per_budget=4, noise=0.01)
  record = approach3.fit(runs, {'alpha': 0.34, 'beta': 0.28}, num_bootstrap=10)
  assert record['alpha'] == 0.34 and np.isfinite(record['E'])
  assert record['num_bootstrap'] + record['bootstrap_failed'] == 10
