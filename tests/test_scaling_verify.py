"""`verify` end to end on the markov source: a micro sweep through the real trainer, its fit,
the compute-optimal run for a new budget, and the ledger row that scores it."""

import json
import os

import pytest

from jaxscale.scaling import cli
from jaxscale.scaling.analysis import verify
from jaxscale.scaling.sweeps import launcher, sweep
from tests import test_scaling_end_to_end


@pytest.mark.slow
def test_verify_runs_a_micro_budget_and_writes_its_ledger_row(tmp_path, capsys):
  spec = test_scaling_end_to_end.micro_spec(tmp_path / 'tfds')
  spec.model_sizes = (3000.0, 12000.0)
  spec.tokens = (2560.0, 5120.0, 10240.0)
  out = tmp_path / 'sweep'
  planned = sweep.plan(spec)
  sweep.write(planned, out)
  assert len(planned['runs']) == 6
  assert not launcher.run_all(str(out), parallel=2)['failed']
  budget = 2 * max(run['C'] for run in planned['runs'])
  argv = ['verify', str(out), '--budget', str(budget), '--bootstrap', '20',
          '--fix', 'alpha=0.3', '--fix', 'beta=0.3']
  assert cli.main(argv) == 0, capsys.readouterr().err
  row = json.loads(capsys.readouterr().out)
  ledger = [json.loads(line) for line in (out / 'verify.jsonl').read_text().splitlines()]
  assert ledger == [row]
  assert row['budget'] == budget and row['actual_loss'] > 0 and row['predicted_loss'] > 0
  assert row['inside'] in (True, False) and len(row['interval']) == 2
  assert 0 < row['true_min_loss'] < row['actual_loss']
  assert row['fitted_E_minus_true'] == pytest.approx(row['fitted_E'] - row['true_min_loss'])
  assert os.path.exists(os.path.join(verify.work_dir(str(out), budget), 'config.py'))

  # Resumable: a second call trains nothing and scores the same run again.
  assert cli.main(argv) == 0
  again = json.loads(capsys.readouterr().out)
  assert again['actual_loss'] == row['actual_loss'] and again['run'] == row['run']
  assert len((out / 'verify.jsonl').read_text().splitlines()) == 2
