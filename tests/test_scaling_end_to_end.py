"""A micro sweep through the real trainer: plan -> run (with a WSD cooldown branch) -> collect."""

import json
import os
import subprocess

import ml_collections
import pytest

from jaxscale.scaling.runs import collect, table
from jaxscale.scaling.sweeps import launcher, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro_spec(data_dir):
  spec = ml_collections.ConfigDict({
      'base_config': os.path.join(REPO, 'configs', 'default.py'),
      'overrides': ('dataset.name=markov', 'dataset.builder_config=tiny',
                    f'dataset.data_dir={data_dir}', 'dataset.seq_len=32', 'batch_size=8',
                    'num_eval_batches=2', 'async_checkpointing=False'),
      'vocab_size': 4, 'kind': 'grid', 'budgets': (), 'sizes_per_budget': 0, 'size_span': 1.0,
      'tokens_per_param': 20.0, 'model_sizes': (3000.0,), 'tokens': (5120.0, 10240.0),
      'size_count': 'total', 'warmup_fraction': 0.1, 'evals_per_run': 4,
      'shape': {'aspect_ratio': 16.0, 'head_dim': 8, 'mlp_ratio': 4, 'max_layers': 2},
      'cooldown': {'enabled': True, 'checkpoint_every_steps': 8},
  })
  return spec


@pytest.mark.slow
def test_micro_sweep_through_the_trainer(tmp_path):
  out = tmp_path / 'sweep'
  planned = sweep.plan(micro_spec(tmp_path / 'tfds'))
  sweep.write(planned, out)
  trunk, branch = sorted(planned['runs'], key=lambda run: -run['steps'])
  assert trunk['steps'] == 40 and branch['branch_from'] == {'run': trunk['name'], 'step': 16}

  result = launcher.run_all(str(out), parallel=2)
  logs = {run['name']: (out / 'runs' / run['name'] / 'train.log').read_text()
          for run in planned['runs']}
  assert sorted(result['finished']) == sorted(logs), logs
  assert 'Resumed from checkpoint at step 16' in logs[branch['name']]

  rows, unfinished = collect.collect(str(out))
  assert not unfinished
  by_run = {row['run']: row for row in rows}
  for run in planned['runs']:
    row = by_run[run['name']]
    assert (row['N'], row['D']) == (run['N'], run['D'])
    assert row['C'] == pytest.approx(run['C'])
    assert 0 < row['dataset_min_loss'] < row['loss']
  all_points, _ = collect.collect(str(out), all_points=True)
  branch_steps = [row['step'] for row in all_points if row['run'] == branch['name']]
  assert branch_steps == [10, 20]  # Evals on either side of the branch point, both present.
  collect.write(rows, out / 'runs.csv')
  assert len(table.read_csv(out / 'runs.csv')['loss']) == 2
  assert launcher.run_all(str(out))['skipped'] == 2
  summary = json.loads((out / 'runs' / branch['name'] / 'summary.json').read_text())
  assert summary['finished'] and summary['step'] == branch['steps']

  # The cooldown trick's claim: the branch is exactly the run trained from scratch.
  scratch = tmp_path / 'scratch'
  subprocess.run(sweep.command(planned, branch, scratch), check=True, capture_output=True)
  from_scratch = json.loads((scratch / 'summary.json').read_text())
  assert summary['eval_loss'] == pytest.approx(from_scratch['eval_loss'], rel=1e-6)
