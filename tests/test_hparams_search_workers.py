"""A search shared by worker processes through one journal storage: the budget is exact, no trial
runs twice, and a killed worker's trial is failed, retried in its workdir and finished."""

import collections
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest

from jaxscale.hparams import search_cli, search_workers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = f'''
import ml_collections
from jaxscale.config import config_base

def get_config():
  c = config_base.load_config_file({os.path.join(REPO, 'configs', 'sweeps', 'tiny_lr_search.py')!r})
  c.base_config = {os.path.join(REPO, 'configs', 'default.py')!r}
  c.overrides = tuple(c.overrides) + ('num_train_steps=30', 'eval_every_steps=10',
                                      'log_every_steps=10', 'checkpoint_every_steps=10')
  c.search.method = 'random'
  c.search.num_trials = 6
  c.search.pruner = 'none'
  return c
'''
BUDGET = 6
TIMEOUT_S = 480


def _worker(spec, directory, storage, worker_id, log):
  return subprocess.Popen(
      [sys.executable, '-m', 'jaxscale.hparams', 'search', spec, '--dir', directory,
       '--storage', storage, '--worker', '--worker-id', str(worker_id),
       '--heartbeat-interval', '1', '--grace-period', '8'],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, 'w'))


@pytest.mark.slow
def test_three_workers_share_a_journal_exactly_and_resolve_a_killed_workers_trial(tmp_path):
  spec = tmp_path / 'spec.py'
  spec.write_text(SPEC)
  directory, journal = str(tmp_path / 'search'), tmp_path / 'search' / 'journal.log'
  storage = f'journal:{journal}'
  logs = [tmp_path / f'worker{i}.log' for i in range(3)]
  workers = [_worker(str(spec), directory, storage, i, logs[i]) for i in range(3)]
  deadline = time.monotonic() + TIMEOUT_S
  try:
    # Kill worker 0 mid-trial: once its trial's trainer has written an eval row.
    victim_trial = None
    while victim_trial is None:
      assert time.monotonic() < deadline and workers[0].poll() is None, logs[0].read_text()
      started = [line.split()[2].rstrip(':') for line in logs[0].read_text().splitlines()
                 if line.startswith('[search] trial ') and ' in ' in line]
      if started:
        workdir = os.path.join(directory, 'trials', f'{int(started[0]):04d}')
        metrics = os.path.join(workdir, 'metrics.jsonl')
        if os.path.exists(metrics) and 'eval_loss' in open(metrics).read():
          victim_trial = int(started[0])
      time.sleep(0.2)
    workers[0].send_signal(signal.SIGKILL)
    for worker, log in zip(workers[1:], logs[1:]):
      worker.wait(timeout=max(1, deadline - time.monotonic()))
      assert worker.returncode == 0, log.read_text()[-3000:]
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()

  storage_object = optuna.storages.JournalStorage(
      optuna.storages.journal.JournalFileBackend(str(journal)))
  trials = optuna.load_study(study_name='search', storage=storage_object).get_trials()
  states = collections.Counter(t.state for t in trials if not t.user_attrs.get('over_budget'))
  counted = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                              optuna.trial.TrialState.PRUNED)]
  assert len(counted) == BUDGET  # Exact across workers.
  assert not states[optuna.trial.TrialState.RUNNING] and not states[optuna.trial.TrialState.WAITING]
  assert states[optuna.trial.TrialState.FAIL] == 1  # Only the killed worker's trial.
  (killed,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL
               and not t.user_attrs.get('over_budget')]
  assert killed.number == victim_trial
  (retry,) = [t for t in counted
              if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
  assert retry.params == killed.params
  assert retry.user_attrs['workdir'] == killed.user_attrs['workdir']  # Resumed, not rerun.
  # No trial ran twice: one workdir and one parameter point per counted trial.
  assert len({t.user_attrs['workdir'] for t in counted}) == BUDGET
  assert len({tuple(sorted(t.params.items())) for t in counted}) == BUDGET
  for t in counted:
    assert os.path.exists(os.path.join(t.user_attrs['workdir'], 'summary.json'))
  # The retried run resumed from the checkpoint the killed trainer saved.
  train_log = open(os.path.join(retry.user_attrs['workdir'], 'train.log')).read()
  assert 'Restored' in train_log or 'resum' in train_log.lower(), train_log[-2000:]


def test_workers_seed_their_samplers_apart_and_repeatably():
  seeds = {search_workers.worker_seed(0, worker, 0) for worker in range(3)}
  assert len(seeds) == 3
  assert search_workers.worker_seed(0, 1, 0) == search_workers.worker_seed(0, 1, 0)
  assert search_workers.worker_seed(0, None, 0) != search_workers.worker_seed(0, None, 0)


@pytest.mark.parametrize('storage', ['postgresql://nobody@127.0.0.1:1/none', 'redis:thing',
                                     'sqlite:////proc/no/such/dir/study.db'])
def test_storage_that_cannot_be_opened_is_one_line_before_any_worker(tmp_path, capsys, storage):
  spec = tmp_path / 'spec.py'
  spec.write_text(SPEC)
  code = search_cli.main([str(spec), '--dir', str(tmp_path / 'search'), '--storage', storage,
                          '--workers', '3'])
  assert code == 2
  error = capsys.readouterr().err
  assert error.startswith('error: cannot open the study storage') and error.count('\n') == 1
  assert not os.path.exists(tmp_path / 'search' / 'trials')


LRS = (3e-2, 2e-2, 1e-2, 1e-6, 2e-6, 3e-6)  # Three that learn, then three that barely move.
PRUNING_SPEC = f'''
import ml_collections
from jaxscale.config import config_base

def get_config():
  c = config_base.load_config_file({os.path.join(REPO, 'configs', 'sweeps', 'tiny_lr_search.py')!r})
  c.base_config = {os.path.join(REPO, 'configs', 'default.py')!r}
  c.overrides = tuple(c.overrides) + ('num_train_steps=20', 'eval_every_steps=10',
                                      'log_every_steps=10', 'checkpoint_every_steps=20',
                                      'optimizer.warmup_steps=2')
  c.search.method = 'grid'  # Trials are claimed in this order: the learning ones first.
  c.search.params = (('optimizer.learning_rate', 'choice', {LRS!r}),)
  c.search.num_trials = {len(LRS)}
  c.search.pruner = 'median'
  c.search.pruner_startup_trials = 3
  c.search.pruner_warmup_steps = 0
  return c
'''


@pytest.mark.slow
def test_median_pruner_prunes_a_workers_trial_on_the_other_workers_results(tmp_path):
  spec = tmp_path / 'spec.py'
  spec.write_text(PRUNING_SPEC)
  directory, journal = tmp_path / 'search', tmp_path / 'search' / 'journal.log'
  result = subprocess.run(
      [sys.executable, '-m', 'jaxscale.hparams', 'search', str(spec), '--dir', str(directory),
       '--storage', f'journal:{journal}', '--workers', '3'],
      cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]

  storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
  trials = optuna.load_study(study_name='search', storage=storage).get_trials()
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
  assert len(complete) + len(pruned) == len(LRS)  # The budget holds exactly, pruned included.
  assert {t.user_attrs['worker'] for t in trials} == {'worker 0', 'worker 1', 'worker 2'}
  print('pruned:', [(t.number, t.user_attrs['worker'], max(t.intermediate_values)) for t in pruned])
  assert pruned and all(t.params['optimizer.learning_rate'] < 1e-5 for t in pruned)
  for trial in pruned:
    # Its intermediate values trail the median of the completed trials at its last step...
    step, value = max(trial.intermediate_values.items())
    assert value > np.median([t.intermediate_values[step] for t in complete
                              if t.datetime_complete < trial.datetime_complete])
  # ...and for at least one, its own worker had not finished the 3 trials the pruner waits for:
  # the completed trials it was judged against came from the other workers.
  def own_finished_before(trial):
    return sum(t.user_attrs['worker'] == trial.user_attrs['worker']
               and t.datetime_complete < trial.datetime_start for t in complete)
  assert min(own_finished_before(t) for t in pruned) < 3
