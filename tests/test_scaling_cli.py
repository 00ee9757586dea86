"""`python -m jaxscale.scaling` fit / predict / plot / compare / validate, through cli.main."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxscale.scaling import cli
from jaxscale.scaling.runs import synthetic, table


def write_runs(path, runs, extra_column=True):
  columns = list(runs)
  rows = [dict(zip(columns, values)) for values in zip(*runs.values())]
  if extra_column:
    for index, row in enumerate(rows):
      row['run'] = f'run{index}'  # Extra columns are ignored by the fits.
    columns.append('run')
  table.write_csv(path, rows, columns)
  return str(path)


def run_cli(capsys, *argv):
  code = cli.main([str(arg) for arg in argv])
  captured = capsys.readouterr()
  return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


@pytest.fixture(scope='module')
def isoflop_csv(tmp_path_factory):
  runs = synthetic.isoflop_runs(noise=0.002, seed=7)
  return write_runs(tmp_path_factory.mktemp('runs') / 'runs.csv', runs)


def test_fit_then_predict(tmp_path, capsys, isoflop_csv):
  fit_path = tmp_path / 'fit.json'
  code, summary, _ = run_cli(capsys, 'fit', '--csv', isoflop_csv, '--law', 'chinchilla',
                             '--out', fit_path, '--bootstrap', 50, '--seed', 1)
  assert code == 0
  stored = json.loads(fit_path.read_text())
  for name in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b'):
    assert stored[name] == pytest.approx(summary[name])
    assert len(stored['ci'][name]) == 2
  assert stored['num_points'] == 28
  assert len(stored['bootstrap']['alpha']) == 50

  code, prediction, _ = run_cli(capsys, 'predict', '--fit', fit_path, '--compute', 1e21)
  assert code == 0 and {'N_opt', 'D_opt', 'loss', 'ci'} <= set(prediction)
  assert prediction['ci']['N_opt'][0] <= prediction['N_opt'] <= prediction['ci']['N_opt'][1]
  code, point, _ = run_cli(capsys, 'predict', '--fit', fit_path, '--N', 1e9, '--D', 2e10)
  assert code == 0 and point['ci']['loss'][0] <= point['loss'] <= point['ci']['loss'][1]


def test_fit_with_fixed_asymptote_and_other_approaches(tmp_path, capsys, isoflop_csv):
  code, pinned, _ = run_cli(capsys, 'fit', '--csv', isoflop_csv, '--out', tmp_path / 'f.json',
                            '--fix', 'E=1.6', '--bootstrap', 0)
  assert code == 0 and pinned['E'] == 1.6 and 'ci' not in pinned
  for approach in (1, 2):
    code, record, _ = run_cli(capsys, 'fit', '--csv', isoflop_csv, '--approach', approach,
                              '--out', tmp_path / f'a{approach}.json', '--bootstrap', 20)
    assert code == 0 and record['approach'] == approach and 'a' in record['ci']
  code, record, _ = run_cli(capsys, 'fit', '--csv', isoflop_csv, '--law', 'kaplan',
                            '--no-offset', '--out', tmp_path / 'k.json', '--bootstrap', 0)
  assert code == 0 and record['L(C)']['E'] == 0.0


def test_plot_writes_pngs(tmp_path, capsys, isoflop_csv):
  for approach in (2, 3):
    fit_path = tmp_path / f'fit{approach}.json'
    run_cli(capsys, 'fit', '--csv', isoflop_csv, '--approach', approach, '--out', fit_path,
            '--bootstrap', 0)
    code, written, _ = run_cli(capsys, 'plot', '--csv', isoflop_csv, '--fit', fit_path,
                               '--out', tmp_path / f'plots{approach}')
    assert code == 0 and len(written['written']) == 4
    for path in written['written']:
      with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_compare_and_validate(tmp_path, capsys, isoflop_csv):
  runs = table.read_csv(isoflop_csv)
  variant = write_runs(tmp_path / 'variant.csv', {'C': runs['C'] / 2, 'loss': runs['loss']},
                       extra_column=False)
  code, result, _ = run_cli(capsys, 'compare', '--baseline', isoflop_csv, '--variant', variant,
                            '--bootstrap', 50)
  assert code == 0 and result['multiplier'] == pytest.approx(2.0, rel=0.05)
  code, report, _ = run_cli(capsys, 'validate', '--csv', isoflop_csv, '--bootstrap', 50)
  assert code == 0 and report['summary']['num_held_out'] == 7
  assert all('inside_pi' in row for row in report['held_out'])


@pytest.mark.parametrize('columns, message', [
    ({'N': [1e8] * 8, 'loss': [3.0] * 8}, "missing column 'D'"),
    ({'N': [1e8, -1] * 4, 'D': [1e9] * 8, 'loss': [3.0] * 8}, "column 'N'"),
    ({'N': [1e8] * 8, 'D': [1e9] * 8, 'loss': [3.0, float('nan')] * 4}, "column 'loss'"),
])
def test_bad_tables_exit_with_a_message(tmp_path, capsys, columns, message):
  path = write_runs(tmp_path / 'bad.csv', {k: np.array(v) for k, v in columns.items()})
  code, output, error = run_cli(capsys, 'fit', '--csv', path, '--out', tmp_path / 'x.json')
  assert code == 2 and output is None
  assert message in error


def test_module_entry_point_runs():
  result = subprocess.run([sys.executable, '-m', 'jaxscale.scaling', '--help'],
                          capture_output=True, text=True, check=True)
  for command in ('fit', 'predict', 'plot', 'compare', 'validate', 'sweep', 'run', 'collect'):
    assert command in result.stdout


def test_predict_on_a_fit_with_nulls_exits_with_a_message(tmp_path, capsys, isoflop_csv):
  fit_path = tmp_path / 'fit.json'
  assert run_cli(capsys, 'fit', '--csv', isoflop_csv, '--out', fit_path, '--bootstrap', 5)[0] == 0
  record = json.loads(fit_path.read_text())
  record['E'] = record['alpha'] = None  # What a fit that diverged to NaN writes.
  fit_path.write_text(json.dumps(record))
  code, output, error = run_cli(capsys, 'predict', '--fit', fit_path, '--compute', 1e21)
  assert code == 2 and output is None
  assert 'E, alpha' in error and 'null' in error and 'Traceback' not in error


def test_every_approach_reports_its_failed_bootstrap_refits(tmp_path, capsys, isoflop_csv):
  for approach in (1, 2, 3):
    fit_path = tmp_path / f'fit{approach}.json'
    code, _, _ = run_cli(capsys, 'fit', '--csv', isoflop_csv, '--approach', approach, '--out',
                         fit_path, '--bootstrap', 20)
    assert code == 0, approach
    stored = json.loads(fit_path.read_text())
    assert stored['num_bootstrap'] + stored['num_bootstrap_failed'] == 20, approach
  code, _, _ = run_cli(capsys, 'fit', '--csv', isoflop_csv, '--law', 'kaplan', '--out',
                       tmp_path / 'kaplan.json', '--bootstrap', 20)
  stored = json.loads((tmp_path / 'kaplan.json').read_text())
  for law in ('L(N)', 'L(D)', 'L(C)'):
    assert stored[law]['num_bootstrap'] + stored[law]['num_bootstrap_failed'] == 20, law


def test_sweep_of_a_search_spec_points_to_the_search_command(tmp_path, capsys):
  out = tmp_path / 'search'
  code = cli.main(['sweep', '--config', 'configs/sweeps/tiny_lr_search.py', '--out', str(out)])
  assert code == 2
  error = capsys.readouterr().err
  assert 'python -m jaxscale.hparams search ' in error and 'tiny_lr_search.py --dir' in error
  assert not out.exists()  # Nothing planned, nothing written.
