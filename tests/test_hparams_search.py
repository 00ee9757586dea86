"""Hyperparameter search: resuming a killed study, pruning, `best` (with a stand-in trainer)."""

import json
import math
import os
import sys
import time

import optuna
import pytest

from jaxscale.hparams import best, search, space, trial_runner
from jaxscale.scaling.sweeps import run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, 'configs', 'sweeps', 'tiny_lr_search.py')
EVAL_STEPS = (10, 20, 30, 40)


def make_spec(**search_changes):
  spec = run_config.load_config_file(SPEC)
  spec.base_config = os.path.join(REPO, 'configs', 'default.py')
  spec.search.update(search_changes)
  return spec


def loss_curve(overrides, step):
  """A made-up loss: lowest at learning rate 1e-2, falling with steps."""
  lr = float(next(o for o in overrides if o.startswith('optimizer.learning_rate=')).split('=')[1])
  return 2.0 + (math.log10(lr) + 2.0) ** 2 + 10.0 / step


class FakeRunner:
  """Writes eval rows and a summary.json as the trainer would; can die mid-run like a kill."""

  def __init__(self, die_in_call=None):
    self.calls = []  # (workdir, overrides) per call.
    self.die_in_call = die_in_call
    self.rows_written = {}

  def __call__(self, workdir, overrides, on_eval):
    self.calls.append((workdir, list(overrides)))
    os.makedirs(workdir, exist_ok=True)
    for step in EVAL_STEPS:
      if len(self.calls) == self.die_in_call and step == EVAL_STEPS[2]:
        raise KeyboardInterrupt('simulated kill of the search process')
      row = {'step': step, 'eval_loss': loss_curve(overrides, step)}
      with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(row) + '\n')
      self.rows_written[workdir] = step
      on_eval(step, row)
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump({'finished': True, 'step': EVAL_STEPS[-1], 'eval_loss': row['eval_loss']}, f)


def test_killed_search_resumes_without_losing_or_repeating_trials(tmp_path):
  spec = make_spec(method='grid', grid_points=3, pruner='none')  # 3 learning rates x 3 decays.
  dying = FakeRunner(die_in_call=3)
  with pytest.raises(KeyboardInterrupt):
    search.run_search(spec, tmp_path, num_trials=6, runner=dying, stream=open(os.devnull, 'w'))
  before = {t.number: (t.state, t.params) for t in search.load_study(tmp_path).get_trials()
            if t.state != optuna.trial.TrialState.WAITING}
  assert [s for s, _ in before.values()].count(optuna.trial.TrialState.COMPLETE) == 2
  assert before[2][0] == optuna.trial.TrialState.RUNNING  # Left by the kill.

  resumed = FakeRunner()
  summary = search.run_search(spec, tmp_path, num_trials=6, runner=resumed,
                              stream=open(os.devnull, 'w'))
  trials = search.load_study(tmp_path).get_trials()
  waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
  assert len(waiting) == 9 - 6  # The grid's other points, enqueued, not run.
  trials = [t for t in trials if t not in waiting]
  assert summary['complete'] == 6 and len(trials) == 6
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  for number in (0, 1, 2):  # Kept, and the interrupted one finished with its own parameters.
    assert trials[number].params == before[number][1]
  # The interrupted trial ran again in its own workdir; the two finished ones did not.
  first_workdir = resumed.calls[0][0]
  assert first_workdir == search.trial_dir(tmp_path, 2)
  assert [c[0] for c in dying.calls][:2] == [search.trial_dir(tmp_path, n) for n in (0, 1)]
  assert search.trial_dir(tmp_path, 0) not in [c[0] for c in resumed.calls]
  points = [tuple(sorted(t.params.items())) for t in trials]
  assert len(set(points)) == len(points)  # No grid point ran twice.
  assert trials[2].intermediate_values == {s: pytest.approx(loss_curve(resumed.calls[0][1], s))
                                           for s in EVAL_STEPS}


def test_resumed_random_search_draws_new_points(tmp_path):
  spec = make_spec(method='random', pruner='none')
  with pytest.raises(KeyboardInterrupt):
    search.run_search(spec, tmp_path, num_trials=5, runner=FakeRunner(die_in_call=3),
                      stream=open(os.devnull, 'w'))
  search.run_search(spec, tmp_path, num_trials=5, runner=FakeRunner(), stream=open(os.devnull, 'w'))
  trials = search.load_study(tmp_path).get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE'] * 5
  # A new process with the spec's seed must not replay the first process's draws.
  assert len({tuple(sorted(t.params.items())) for t in trials}) == 5


def test_median_pruner_stops_a_clearly_bad_trial(tmp_path):
  spec = make_spec(method='tpe', pruner='median', pruner_startup_trials=2, pruner_warmup_steps=0)
  study = search.open_study(tmp_path, spec)
  for lr in (1e-2, 1.2e-2, 1e-3):  # Two good ones, then one far off the optimum.
    study.enqueue_trial({'optimizer.learning_rate': lr, 'optimizer.weight_decay': 0.0})
  runner = FakeRunner()
  search.run_search(spec, tmp_path, num_trials=3, runner=runner, stream=open(os.devnull, 'w'))
  trials = search.load_study(tmp_path).get_trials()
  assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [
      optuna.trial.TrialState.PRUNED]
  bad_workdir = search.trial_dir(tmp_path, 2)
  assert runner.rows_written[bad_workdir] == EVAL_STEPS[0]  # Stopped at its first eval row.
  assert not os.path.exists(os.path.join(bad_workdir, 'summary.json'))


def test_search_refuses_an_objective_measured_on_test_unless_forced(tmp_path, capsys):
  spec = make_spec(method='random', pruner='none')
  spec.overrides = list(spec.overrides) + ['dataset.eval_split=test']
  with pytest.raises(ValueError, match='tuning on test leaks it into the reported number'):
    search.run_search(spec, tmp_path / 'refused', num_trials=1, runner=FakeRunner(),
                      stream=open(os.devnull, 'w'))
  assert not os.path.exists(tmp_path / 'refused' / 'study.db')  # Refused before any trial.
  spec_path = tmp_path / 'spec.py'
  spec_path.write_text(
      'from jaxscale.scaling.sweeps import run_config\n'
      'def get_config():\n'
      f'  spec = run_config.load_config_file({SPEC!r})\n'
      f'  spec.base_config = {os.path.join(REPO, "configs", "default.py")!r}\n'
      "  spec.overrides = list(spec.overrides) + ['dataset.eval_split=test']\n"
      '  return spec\n')
  from jaxscale.hparams import search_cli  # noqa: PLC0415
  assert search_cli.main([str(spec_path), '--dir', str(tmp_path / 'cli'), '--trials', '1']) == 2
  assert '--allow_test_objective' in capsys.readouterr().err
  # Forced: it runs. A train-side objective is never refused.
  summary = search.run_search(spec, tmp_path / 'forced', num_trials=2, runner=FakeRunner(),
                              stream=open(os.devnull, 'w'), allow_test_objective=True)
  assert summary['complete'] == 2
  search.check_not_test('train_loss', 'test')


def test_search_refuses_a_trial_whose_recorded_eval_split_is_test(tmp_path):
  """A dataset whose own eval split is test: the trainer's config.json says so."""
  class TestSplitRunner(FakeRunner):
    def __call__(self, workdir, overrides, on_eval):
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump({'dataset': {'eval_split': 'test'}}, f)
      super().__call__(workdir, overrides, on_eval)
  with pytest.raises(ValueError, match="dataset.eval_split='test'"):
    search.run_search(make_spec(method='random', pruner='none'), tmp_path, num_trials=1,
                      runner=TestSplitRunner(), stream=open(os.devnull, 'w'))


def test_best_prints_the_best_trial_and_plots_each_hyperparameter(tmp_path, capsys):
  spec = make_spec(method='grid', grid_points=3, pruner='none',
                   params=(('optimizer.learning_rate', 'log', 1e-3, 1e-1),))
  search.run_search(spec, tmp_path, runner=FakeRunner(), stream=open(os.devnull, 'w'))
  assert best.main([str(tmp_path)]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed['params'] == {'optimizer.learning_rate': pytest.approx(1e-2)}
  assert printed['value'] == pytest.approx(loss_curve(['optimizer.learning_rate=0.01'], 40))
  assert printed['workdir'] == search.trial_dir(tmp_path, printed['number'])
  assert f'optimizer.learning_rate={printed["params"]["optimizer.learning_rate"]!r}' in printed[
      'overrides']
  assert os.path.getsize(printed['plot']) > 1000


def test_search_space_rejects_malformed_entries():
  with pytest.raises(ValueError, match='low > 0'):
    space.parse([('optimizer.learning_rate', 'log', 0.0, 1.0)])
  with pytest.raises(ValueError, match='choice'):
    space.parse([('batch_size', 'uniform', 1, 2)])
  assert space.parse([('batch_size', 'choice', (8, 16))])[0].grid(4) == [8, 16]
  with pytest.raises(ValueError, match=r"unknown keys \['trials'\]"):
    search.with_defaults(make_spec(trials=3))
  with pytest.raises(ValueError, match='successive_halving'):
    search.with_defaults(make_spec(pruner='hyperband'))


FAKE_TRAINER = '''#!{python}
"""Stands in for `python -m jaxscale.main`: an eval row every 0.3 s, then summary.json."""
import json, math, os, sys, time
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
workdir, lr = args['workdir'], float(args['config.optimizer.learning_rate'])
if lr > 0.05:
  sys.exit('FloatingPointError: train_loss=nan at step 3')
os.makedirs(workdir, exist_ok=True)
for step in {steps}:
  loss = 2.0 + (math.log10(lr) + 2.0) ** 2 + 10.0 / step
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({{'step': step, 'train_loss': loss}}) + '\\n')
    f.write(json.dumps({{'step': step, 'eval_loss': loss}}) + '\\n')
  time.sleep(0.3)
json.dump({{'finished': True, 'eval_loss': loss}}, open(os.path.join(workdir, 'summary.json'), 'w'))
'''


def test_trainer_runner_reports_eval_rows_kills_pruned_runs_and_records_failures(tmp_path):
  script = tmp_path / 'fake_python'
  script.write_text(FAKE_TRAINER.format(python=sys.executable, steps=EVAL_STEPS))
  script.chmod(0o755)
  spec = make_spec(method='tpe', pruner='median', pruner_startup_trials=2, pruner_warmup_steps=0)
  study = search.open_study(tmp_path / 'search', spec)
  for lr in (1e-2, 1.2e-2, 1e-3, 0.09):  # Two good, one clearly bad, one that crashes.
    study.enqueue_trial({'optimizer.learning_rate': lr, 'optimizer.weight_decay': 0.0})
  runner = trial_runner.TrainerRunner(spec.base_config, python=str(script), poll_seconds=0.05)
  search.run_search(spec, tmp_path / 'search', num_trials=4, runner=runner,
                    stream=open(os.devnull, 'w'))
  trials = search.load_study(tmp_path / 'search').get_trials()
  assert [t.state.name for t in trials] == ['COMPLETE', 'COMPLETE', 'PRUNED', 'FAIL']
  assert trials[0].intermediate_values == {
      s: pytest.approx(loss_curve(['optimizer.learning_rate=0.01'], s)) for s in EVAL_STEPS}
  assert trials[0].value == pytest.approx(loss_curve(['optimizer.learning_rate=0.01'], 40))
  time.sleep(1.0)  # Long enough for the pruned run to write more rows, had it not been killed.
  pruned_dir = search.trial_dir(tmp_path / 'search', 2)
  assert len(trial_runner.eval_rows(pruned_dir)) < len(EVAL_STEPS)
  assert not os.path.exists(os.path.join(pruned_dir, 'summary.json'))
  assert 'FloatingPointError' in trials[3].user_attrs['error']
