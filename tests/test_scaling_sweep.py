"""Sweep planning, the launcher (against a stand-in trainer) and collect (from fake workdirs)."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxscale.metrics import flops
from jaxscale.scaling import cli
from jaxscale.scaling.runs import collect, table as table_lib
from jaxscale.scaling.sweeps import launcher, run_config, shapes, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SPEC = os.path.join(REPO, 'configs', 'sweeps', 'tiny_isoflop.py')


def tiny_spec(**changes):
  spec = run_config.load_config_file(TINY_SPEC)
  spec.base_config = os.path.join(REPO, 'configs', 'default.py')
  spec.update(changes)
  return spec


def grid_spec(sizes, tokens, cooldown=False):
  return tiny_spec(kind='grid', model_sizes=sizes, tokens=tokens,
                   cooldown=ml_collections.ConfigDict(
                       {'enabled': cooldown, 'checkpoint_every_steps': 20}))


def test_isoflop_plan_spans_each_budget_with_exact_flops():
  planned = sweep.plan(tiny_spec())
  spec = tiny_spec()
  for budget in spec.budgets:
    runs = [run for run in planned['runs'] if run['budget'] == budget]
    assert len({run['N'] for run in runs}) >= 3
    for run in runs:
      model = shapes.with_shape(run_config.load_config_file(spec.base_config).model,
                                {key: run[key] for key in shapes.SHAPE_KEYS})
      per_token = flops.train_flops_per_token(model, 64, 32)
      assert run['D'] == run['steps'] * 16 * 64
      assert run['C'] == pytest.approx(run['D'] * per_token)
      assert run['C'] == pytest.approx(budget, rel=0.05)
      assert f'num_train_steps={run["steps"]}' in run['overrides']
      assert f'model.d_model={run["d_model"]}' in run['overrides']


def test_shape_rule_hits_target_and_keeps_the_aspect_ratio():
  rule = shapes.ShapeRule(aspect_ratio=32, head_dim=64, mlp_ratio=4, max_layers=48)
  model = run_config.load_config_file(os.path.join(REPO, 'configs', 'default.py')).model
  for target in (1e7, 1e8, 1e9):
    shape = shapes.shape_for_params(target, model, 32000, rule)
    total, _ = flops.count_params(shapes.with_shape(model, shape), 32000)
    assert total == pytest.approx(target, rel=0.15)
    assert shape['d_model'] % 64 == 0 and shape['num_heads'] * 64 == shape['d_model']
    assert shape['mlp_dim'] == 4 * shape['d_model']
    assert 16 <= shape['d_model'] / shape['num_layers'] <= 64


def test_write_creates_run_directories(tmp_path):
  planned = sweep.plan(grid_spec((2e4, 8e4), (1e5, 2e5)))
  sweep.write(planned, tmp_path)
  assert len(planned['runs']) == 4
  assert json.loads((tmp_path / 'sweep.json').read_text())['runs'][0]['name']
  for run in planned['runs']:
    run_dir = tmp_path / 'runs' / run['name']
    assert json.loads((run_dir / 'overrides.json').read_text()) == run['overrides']
    command = (run_dir / 'command.sh').read_text()
    assert '-m jaxscale.main' in command and f'--workdir={run_dir}' in command
    assert '--config.dataset.name=markov' in command


def test_cooldown_branches_share_a_trunk():
  planned = sweep.plan(grid_spec((2e4,), (1e5, 2e5, 4e5), cooldown=True))
  trunk = max(planned['runs'], key=lambda run: run['steps'])
  branches = [run for run in planned['runs'] if run is not trunk]
  assert 'branch_from' not in trunk and 'keep_checkpoints' in ' '.join(trunk['overrides'])
  warmups = {item for run in planned['runs'] for item in run['overrides']
             if item.startswith('optimizer.warmup_steps=')}
  assert len(warmups) == 1
  for run in branches:
    assert 'optimizer.schedule=wsd' in run['overrides']
    step = run['branch_from']['step']
    assert run['branch_from']['run'] == trunk['name'] and step % 20 == 0
    assert step <= run['steps'] - round(0.2 * run['steps'])  # Inside its own stable phase.


def test_overrides_are_typed_and_checked():
  config = run_config.load_config_file(os.path.join(REPO, 'configs', 'default.py'))
  changed = run_config.apply_overrides(
      config, ['num_train_steps=1000', 'optimizer.learning_rate=1e-2', 'model.tie_embeddings=false',
               'dataset.name=markov'])
  assert changed.num_train_steps == 1000 and changed.optimizer.learning_rate == 0.01
  assert changed.model.tie_embeddings is False and changed.dataset.name == 'markov'
  with pytest.raises(KeyError, match='model.widht'):
    run_config.apply_overrides(config, ['model.widht=3'])
  with pytest.raises(ValueError, match='int'):
    run_config.apply_overrides(config, ['num_train_steps=12.5'])


@pytest.mark.parametrize('override', ['num_train_steps=1e3', 'batch_size=8.0',
                                      'async_checkpointing=maybe'])
def test_planner_rejects_what_the_trainer_rejects(override, tmp_path):
  """The same override on the trainer's own command line fails before training starts."""
  config_path = os.path.join(REPO, 'configs', 'default.py')
  with pytest.raises(ValueError, match=override.split('=')[0]):
    run_config.apply_overrides(run_config.load_config_file(config_path), [override])
  result = subprocess.run(
      [sys.executable, '-m', 'jaxscale.main', f'--config={config_path}',
       f'--workdir={tmp_path}', f'--config.{override}'],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode != 0 and override.split('=')[0] in result.stderr


FAKE_TRAINER = '''
import json, os, sys
workdir, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resumed = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))) if os.path.isdir(
    os.path.join(workdir, 'checkpoints')) else []
start = resumed[-1] if resumed else 0
with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
  for step in range(start + every, steps + 1, every):
    os.makedirs(os.path.join(workdir, 'checkpoints', str(step)), exist_ok=True)
    f.write(json.dumps({'step': step, 'eval_loss': 3.0 - step / 1000}) + '\\n')
json.dump({'finished': True, 'started_at': start}, open(os.path.join(workdir, 'summary.json'), 'w'))
'''


def test_launcher_runs_trunks_before_branches_and_resumes(tmp_path, monkeypatch):
  script = tmp_path / 'fake_trainer.py'
  script.write_text(FAKE_TRAINER)
  planned = sweep.plan(grid_spec((2e4,), (1e5, 2e5), cooldown=True))
  out = tmp_path / 'sweep'
  sweep.write(planned, out)
  monkeypatch.setattr(sweep, 'command', lambda _, run, workdir: [
      sys.executable, str(script), str(workdir), str(run['steps']), '20'])
  result = launcher.run_all(str(out), parallel=2)
  assert sorted(result['finished']) == sorted(run['name'] for run in planned['runs'])
  branch = next(run for run in planned['runs'] if 'branch_from' in run)
  summary = json.loads((out / 'runs' / branch['name'] / 'summary.json').read_text())
  assert summary['started_at'] == branch['branch_from']['step']  # Resumed from the trunk's copy.
  steps = [json.loads(line)['step'] for line in
           (out / 'runs' / branch['name'] / 'metrics.jsonl').read_text().splitlines()]
  assert steps == sorted(steps) and steps[0] == 20  # The trunk's rows up to the branch point.
  assert launcher.run_all(str(out)) == {'finished': [], 'failed': [], 'skipped': 2}


def test_print_commands_lists_unfinished_runs(tmp_path, capsys):
  planned = sweep.plan(grid_spec((2e4,), (1e5, 2e5), cooldown=True))
  sweep.write(planned, tmp_path)
  assert cli.main(['run', str(tmp_path), '--print-commands']) == 0
  printed = capsys.readouterr().out
  assert printed.count('-m jaxscale.main') == 2 and 'cp -r' in printed


def fake_workdir(path, name, steps, finished=True, params=25760):
  workdir = path / 'runs' / name
  workdir.mkdir(parents=True)
  config = run_config.load_config_file(os.path.join(REPO, 'configs', 'default.py'))
  config.model.vocab_size = 32
  (workdir / 'config.json').write_text(config.to_json())
  rows = [{'step': 0, 'params_total': params}]
  for step in range(100, steps + 1, 100):
    rows.append({'step': step, 'train_loss': 3.0, 'tokens_seen': step * 1024})
    rows.append({'step': step, 'eval_loss': 3.0 - step / 1000, 'tokens_seen': step * 1024,
                 'flops_seen': step * 1024 * 2e5, 'params_total': params,
                 'params_non_embedding': params - 1024, 'train_loss': 3.0})
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  if finished:
    (workdir / 'summary.json').write_text(json.dumps({
        **rows[-1], 'finished': True, 'dataset_min_loss': 1.12}))


def test_collect_reads_finished_runs(tmp_path, capsys):
  (tmp_path / 'sweep.json').write_text(json.dumps({'runs': [
      {'name': 'a', 'budget': 1e11}, {'name': 'b', 'budget': 1e11},
      {'name': 'c', 'budget': 3e11}]}))
  fake_workdir(tmp_path, 'a', 300)
  fake_workdir(tmp_path, 'b', 500, params=90000)
  fake_workdir(tmp_path, 'c', 200, finished=False)
  rows, unfinished = collect.collect(str(tmp_path))
  assert unfinished == ['c'] and [row['run'] for row in rows] == ['a', 'b']
  assert rows[0]['D'] == 300 * 1024 and rows[0]['C'] == 300 * 1024 * 2e5
  assert rows[0]['loss'] == pytest.approx(2.7) and rows[1]['N'] == 90000
  default = run_config.load_config_file(os.path.join(REPO, 'configs', 'default.py'))
  default_width = default.model.d_model
  assert rows[0]['budget'] == 1e11 and rows[0]['d_model'] == default_width
  assert rows[0]['vocab_size'] == 32

  assert cli.main(['collect', str(tmp_path), '--out', str(tmp_path / 'all.csv'),
                   '--all-points']) == 0
  assert json.loads(capsys.readouterr().out)['rows'] == 3 + 5
  header, *lines = (tmp_path / 'all.csv').read_text().splitlines()
  assert header.startswith('run,N,N_nonembed,D,C,loss') and len(lines) == 8


def test_collect_carries_the_eval_loss_stderr_and_documents(tmp_path, capsys):
  fake_workdir(tmp_path, 'a', 200)
  fake_workdir(tmp_path, 'old', 200)  # A run from before the fields: left blank.
  for path in (tmp_path / 'runs' / 'a' / 'summary.json', tmp_path / 'runs' / 'a' / 'metrics.jsonl'):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [{**row, 'eval_loss_stderr': 0.01 * row['step'], 'eval_documents': 86}
            if 'eval_loss' in row else row for row in rows]
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  (tmp_path / 'sweep.json').write_text(json.dumps({'runs': [{'name': 'a'}, {'name': 'old'}]}))
  rows, _ = collect.collect(str(tmp_path), all_points=True)
  assert [(r['run'], r['eval_loss_stderr'], r['eval_documents']) for r in rows] == [
      ('a', 1.0, 86), ('a', 2.0, 86), ('old', '', ''), ('old', '', '')]
  assert cli.main(['collect', str(tmp_path), '--out', str(tmp_path / 'runs.csv')]) == 0
  table = table_lib.read_csv(tmp_path / 'runs.csv')
  np.testing.assert_array_equal(table['eval_loss_stderr'][:1], [2.0])
  assert np.isnan(table['eval_loss_stderr'][1]) and table['eval_documents'][0] == 86


def test_emit_config_writes_a_loadable_compute_optimal_config(tmp_path, capsys):
  sweep.write(sweep.plan(tiny_spec()), tmp_path / 'sweep')
  # An allocation fit putting N_opt = 5e4 parameters at C = 1e12.
  record = {'law': 'chinchilla', 'approach': 2, 'a': 0.5, 'b': 0.5, 'N_coef': 5e4 / 1e6,
            'D_coef': 1e12 ** 0.5 / 5e4 / 6, 'frontier': {'E': 1.1, 'k': 50.0, 'gamma': 0.1}}
  (tmp_path / 'fit.json').write_text(json.dumps(record))
  path = tmp_path / 'optimal.py'
  assert cli.main(['predict', '--fit', str(tmp_path / 'fit.json'), '--compute', '1e12',
                   '--emit-config', str(path), '--sweep', str(tmp_path / 'sweep')]) == 0
  emitted = json.loads(capsys.readouterr().out)
  assert emitted['N'] == pytest.approx(5e4, rel=0.2)
  assert emitted['C'] == pytest.approx(1e12, rel=0.02)
  config = run_config.load_config_file(str(path))
  assert config.dataset.name == 'markov' and config.num_train_steps == emitted['steps']
  assert (config.model.num_layers, config.model.d_model) == (emitted['num_layers'],
                                                             emitted['d_model'])


FLAKY_TRAINER = '''
import json, os, sys
workdir, outcome = sys.argv[1], sys.argv[2]
print('step 10: train loss 3.1', flush=True)
if outcome == 'fail':
  sys.exit('KeyError: no dataset named nonexistent')
json.dump({'finished': True, 'eval_loss': 2.875}, open(os.path.join(workdir, 'summary.json'), 'w'))
'''


def test_run_reports_progress_and_exits_non_zero_naming_the_failed_log(tmp_path, monkeypatch,
                                                                      capsys):
  script = tmp_path / 'flaky_trainer.py'
  script.write_text(FLAKY_TRAINER)
  planned = sweep.plan(grid_spec((2e4,), (1e5, 2e5)))
  sweep.write(planned, tmp_path / 'sweep')
  good, bad = sorted(planned['runs'], key=lambda run: -run['steps'])
  workdirs = []

  def command(_, run, workdir):
    workdirs.append(workdir)
    return [sys.executable, str(script), workdir, 'fail' if run['name'] == bad['name'] else 'ok']
  monkeypatch.setattr(sweep, 'command', command)
  monkeypatch.chdir(tmp_path)
  code = cli.main(['run', 'sweep', '--parallel', '2'])  # Relative to the current directory.
  captured = capsys.readouterr()
  assert code == 1
  assert json.loads(captured.out) == {'finished': [good['name']], 'failed': [bad['name']],
                                      'skipped': 0}
  assert all(os.path.isabs(workdir) for workdir in workdirs)
  bad_log = tmp_path / 'sweep' / 'runs' / bad['name'] / 'train.log'
  assert f'started {good["name"]} in {tmp_path / "sweep" / "runs" / good["name"]}' in captured.err
  assert f'finished {good["name"]}: eval loss 2.8750' in captured.err
  assert f'FAILED {bad["name"]} (exit status 1); its log: {bad_log}' in captured.err
  assert 'no dataset named nonexistent' in captured.err  # The end of its log.
  assert '2/2 done (1 finished, 1 failed, 0 skipped)' in captured.err
  assert 'time left: ~0:00:' in captured.err
  assert captured.err.rstrip().endswith(f'{bad["name"]}: {bad_log}')


def test_run_from_the_command_line_fails_loudly_for_a_broken_trainer(tmp_path):
  """Through the real entry point and trainer: a dataset that does not exist fails at once."""
  planned = sweep.plan(grid_spec((2e4,), (1e5,)))
  planned['runs'][0]['overrides'].append('dataset.name=nonexistent')
  sweep.write(planned, tmp_path / 'sweep')
  result = subprocess.run([sys.executable, '-m', 'jaxscale.scaling', 'run', 'sweep'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'PYTHONPATH': REPO})
  name = planned['runs'][0]['name']
  log = tmp_path / 'sweep' / 'runs' / name / 'train.log'
  assert result.returncode == 1, result.stderr
  assert json.loads(result.stdout)['failed'] == [name]
  assert f'{name}: {log}' in result.stderr and 'nonexistent' in log.read_text()


def test_cli_paths_relative_to_the_current_directory_are_resolved(tmp_path, monkeypatch, capsys):
  spec_text = open(TINY_SPEC).read().replace(
      "'configs/default.py'", repr(os.path.join(REPO, 'configs', 'default.py')))
  (tmp_path / 'spec.py').write_text(spec_text)
  (tmp_path / 'fit.json').write_text(json.dumps(
      {'law': 'chinchilla', 'approach': 2, 'a': 0.5, 'b': 0.5, 'N_coef': 5e4 / 1e6,
       'D_coef': 1e12 ** 0.5 / 5e4 / 6, 'frontier': {'E': 1.1, 'k': 50.0, 'gamma': 0.1}}))
  monkeypatch.chdir(tmp_path)
  assert cli.main(['sweep', '--config', 'spec.py', '--out', 'sweep']) == 0
  assert json.loads(capsys.readouterr().out)['out'] == str(tmp_path / 'sweep')
  run_dir = next((tmp_path / 'sweep' / 'runs').iterdir())
  assert f'--workdir={run_dir} ' in (run_dir / 'command.sh').read_text()
  assert cli.main(['predict', '--fit', 'fit.json', '--compute', '1e12',
                   '--emit-config', 'optimal.py', '--sweep', 'sweep']) == 0
  assert json.loads(capsys.readouterr().out)['config'] == str(tmp_path / 'optimal.py')
  emitted = (tmp_path / 'optimal.py').read_text()
  assert f'From {tmp_path / "fit.json"}, fitted to the sweep {tmp_path / "sweep"}.' in emitted
  monkeypatch.chdir(REPO)  # The emitted config loads from anywhere.
  assert run_config.load_config_file(str(tmp_path / 'optimal.py')).dataset.name == 'markov'
