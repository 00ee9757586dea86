"""Downstream metrics: lm-eval rows logged during training (and to W&B offline), collected into
the runs table, and fitted against loss with Gadre et al.'s form by `scaling fit --target`."""

import csv
import json

import numpy as np
import pytest

from jaxscale.scaling import cli
from jaxscale.scaling.laws import downstream
from tests.helpers import tiny_config

TARGET = 'eval/jaxscale_stdlib_perplexity/bits_per_byte'


def test_the_downstream_law_recovers_known_parameters():
  compute = np.logspace(15, 19, 10)
  loss = 1.2 + 40 / compute ** 0.1
  accuracy = 1 - (0.75 - 0.6 * np.exp(-0.9 * loss))
  noise = np.random.default_rng(0).normal(0, 1e-4, loss.shape)
  record = downstream.fit({'loss': loss, 'C': compute, 'eval/t/acc': accuracy + noise},
                          'eval/t/acc')
  assert record['error'] == '1 - eval/t/acc'
  assert record['epsilon'] == pytest.approx(0.75, rel=0.05)
  assert record['k'] == pytest.approx(0.6, rel=0.1)
  assert record['gamma'] == pytest.approx(0.9, rel=0.1)
  assert record['loss_vs_compute']['E'] == pytest.approx(1.2, rel=0.05)
  assert downstream.predict(record, compute=1e21) == pytest.approx(
      1 - (0.75 - 0.6 * np.exp(-0.9 * (1.2 + 40 / 1e21 ** 0.1))), abs=2e-3)


def test_a_missing_target_column_is_named(tmp_path, capsys):
  table = tmp_path / 'runs.csv'
  table.write_text('run,N,D,C,loss,eval/a/acc\nr,1,2,3,4,0.5\n')
  assert cli.main(['fit', '--csv', str(table), '--target', 'eval/b/acc',
                   '--out', str(tmp_path / 'fit.json')]) == 2
  err = capsys.readouterr().err
  assert "No column 'eval/b/acc'" in err and 'eval/a/acc' in err


@pytest.mark.slow
def test_a_short_sweep_logs_collects_and_fits_a_downstream_metric(data_dir, tmp_path,
                                                                  monkeypatch):
  from jaxscale.inference import lm_eval_action  # noqa: PLC0415  (JAX after conftest)
  from jaxscale.train import loop  # noqa: PLC0415
  # W&B offline must not need the network: an unreachable server would fail any attempt.
  monkeypatch.setenv('WANDB_BASE_URL', 'http://127.0.0.1:9')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  sweep = tmp_path / 'sweep'
  for width in (16, 32):
    config = tiny_config(**{
        'dataset.name': 'python_stdlib', 'dataset.data_dir': str(data_dir),
        'model.vocab_size': 256, 'model.d_model': width, 'num_train_steps': 20,
        'eval_every_steps': 5, 'checkpoint_every_steps': 20, 'num_eval_batches': 1,
        'lm_eval.tasks': ('jaxscale_stdlib_perplexity',), 'lm_eval.every_steps': 5,
        'lm_eval.limit': 2, 'metrics.wandb_project': 'jaxscale-test',
        'metrics.wandb_mode': 'offline', 'optimizer.learning_rate': 1e-2})
    loop.run(config, str(sweep / f'd{width}'), extra_actions=[lm_eval_action.make])
  rows = [json.loads(line) for line in (sweep / 'd16' / 'metrics.jsonl').read_text().splitlines()]
  logged = [row for row in rows if TARGET in row]
  assert [row['step'] for row in logged] == [5, 10, 15, 20]
  assert logged[-1][TARGET] < logged[0][TARGET]  # Training lowers it.
  # The same scalars, config and summary in the offline W&B run, written under the workdir.
  run_file, = (sweep / 'd16' / 'wandb').glob('offline-run-*/run-*.wandb')
  content = run_file.read_bytes()
  assert TARGET.encode() in content and b'eval_loss' in content and b'd_model' in content
  assert b'tokens_seen' in content  # The final summary's counters.

  table = tmp_path / 'runs.csv'
  assert cli.main(['collect', str(sweep), '--out', str(table), '--all-points']) == 0
  with open(table) as f:
    points = list(csv.DictReader(f))
  assert len(points) == 8 and all(point[TARGET] for point in points)
  fit_path = tmp_path / 'fit.json'
  assert cli.main(['fit', '--csv', str(table), '--target', TARGET, '--out', str(fit_path)]) == 0
  record = json.loads(fit_path.read_text())
  assert record['num_runs'] == 8 and record['error'] == TARGET
  # The law tracks the points better than their spread around the mean does.
  values = np.array([float(point[TARGET]) for point in points])
  assert record['residual_rms'] < 0.5 * values.std()
  assert set(record['loss_vs_compute']) >= {'E', 'k', 'gamma'}
