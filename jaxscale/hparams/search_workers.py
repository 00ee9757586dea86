"""A search shared by worker processes on any machines, through one Optuna storage.

Storage (`--storage`): an RDB URL (`sqlite:///PATH`, `postgresql://...`, `mysql://...`) or
`journal:PATH` (Optuna's journal file, for a shared filesystem without a database server);
default `sqlite:///DIR/study.db`. Each worker runs `worker_loop` against it.

Budget, exactly. `spec.search.num_trials` (or --trials) is B. The storage numbers trials
atomically, retries included, so a new trial's number less the retries numbered before it is
its slot: below B it trains; otherwise it is closed at once as FAIL with user attr `over_budget`
(it never trains). Workers ask for a trial only while fewer than B new trials exist or one is
waiting, so over-budget trials come only from workers that asked at the same moment, at most one
per worker. A trial whose worker died gives its slot to its retry (below): finished trials that
hold slots, complete + pruned + failed-by-its-run, end at exactly B.

Liveness. While a trial trains, its worker records a heartbeat every `heartbeat_interval`
seconds: RDB storages through Optuna's own heartbeat (`RDBStorage(heartbeat_interval=...)`), the
journal storage through `HeartbeatJournalStorage`, which keeps it as a trial system attribute.
Before each claim, and while waiting, every worker runs `optuna.storages.fail_stale_trials`: a
RUNNING trial with no heartbeat for `grace_period` seconds is marked FAIL by exactly one worker
(the storage refuses a second change of a finished trial), and Optuna's
`RetryHeartbeatStaleTrialCallback` enqueues a retry with the same parameters and user attributes. The
retry holds the failed trial's slot and trains in its workdir, so the trainer resumes from its
checkpoints: no trial is lost, and none is run twice from the start. A worker leaves only when no
trial is waiting and none is running, so a killed worker's trial is always resolved.

Samplers: each worker seeds its own from (spec.search.seed, worker id, trials so far), so workers
that start together draw different parameters; `--worker-id` makes a worker's draws repeatable.
Pruners read the other workers' intermediate values from the shared storage, as in one process.
Clocks: the journal heartbeat compares wall-clock times written by different machines; keep them
in sync (NTP) and the grace period well above any skew.
"""

import os
import sys
import time
import uuid
import warnings

import numpy as np
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread

from jaxscale.core import paths

# Heartbeats, fail_stale_trials and the retry callback are marked experimental by Optuna; they
# are what this module is built on, so the warning says nothing to the user.
warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_ATTR = 'jaxscale:heartbeat'
HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
  """Optuna's journal storage with the heartbeat RDB storages have, kept in a trial system
  attribute (wall-clock seconds), so `fail_stale_trials` works on it too."""

  def __init__(self, backend, heartbeat_interval: int, grace_period: int, stale_callback=None):
    super().__init__(backend)
    self._heartbeat_interval, self._grace_period = heartbeat_interval, grace_period
    self._stale_callback = stale_callback

  def record_heartbeat(self, trial_id: int) -> None:
    self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

  def _get_stale_trial_ids(self, study_id: int) -> list[int]:
    now, stale = time.time(), []
    for trial in self.get_all_trials(study_id, deepcopy=False,
                                     states=(optuna.trial.TrialState.RUNNING,)):
      # The start counts as a beat: a retry carries its failed trial's last one.
      beats = [trial.system_attrs.get(HEARTBEAT_ATTR),
               trial.datetime_start.timestamp() if trial.datetime_start else None]
      beats = [beat for beat in beats if beat is not None]
      if beats and now - max(beats) > self._grace_period:
        stale.append(trial._trial_id)  # noqa: SLF001
    return stale

  def get_heartbeat_interval(self) -> int:
    return self._heartbeat_interval

  def get_heartbeat_stale_trial_callback(self):
    return self._stale_callback


def default_storage(directory) -> str:
  return f'sqlite:///{os.path.join(paths.resolve_str(directory), "study.db")}'


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
                 grace_period: int = GRACE_PERIOD_S):
  """The storage `url` names, with heartbeats and retries of stale trials; a one-line ValueError
  if it cannot be opened."""
  retry = RetryHeartbeatStaleTrialCallback(max_retry=None)
  try:
    if url.startswith('journal:'):
      path = paths.resolve_str(url[len('journal:'):])
      os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
      backend = optuna.storages.journal.JournalFileBackend(path)
      return HeartbeatJournalStorage(backend, heartbeat_interval, grace_period, retry)
    if '://' not in url:
      raise ValueError('give sqlite:///PATH, postgresql://USER@HOST/DB (any SQLAlchemy URL) or '
                       'journal:PATH')
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period,
                                      heartbeat_stale_trial_callback=retry)
  except Exception as error:  # noqa: BLE001  (the driver's own errors: each becomes one line)
    message = ' '.join(str(error).split())[:300] or type(error).__name__
    raise ValueError(f'cannot open the study storage {url!r}: {message}') from None


def worker_seed(base_seed: int, worker_id, num_trials: int) -> int:
  """A sampler seed that differs between workers and between a worker's restarts."""
  entropy = worker_id if isinstance(worker_id, int) else uuid.uuid4().int
  return int(np.random.SeedSequence([base_seed, entropy, num_trials]).generate_state(1)[0])


def _is_retry(trial) -> bool:
  return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) is not None


def claim(study, budget: int):
  """A trial holding a budget slot, or None when the slots are gone for now (see the module
  docstring). Retries are numbered from the same counter as new trials, so a new trial's slot is
  its number less the retries numbered before it."""
  trials = study.get_trials(deepcopy=False)
  waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
  if not waiting and sum(not _is_retry(t) for t in trials) >= budget:
    return None
  trial = study.ask()
  frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001
  if _is_retry(frozen):
    return trial
  earlier = study.get_trials(deepcopy=False)[:trial.number]
  if trial.number - sum(_is_retry(t) for t in earlier) < budget:
    return trial
  trial.set_user_attr('over_budget', True)  # Other workers took the last slots first.
  study.tell(trial, state=optuna.trial.TrialState.FAIL)
  return None


def worker_loop(study, budget: int, run_trial, stream=None, idle_seconds: float = None) -> int:
  """Claims and runs trials until the budget is spent and no trial is waiting or running; returns
  how many this worker ran. `run_trial(trial)` trains one and tells the study."""
  stream = stream or sys.stderr
  storage = study._storage  # noqa: SLF001
  interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
  idle_seconds = idle_seconds or max(1.0, (interval or 5) / 2)
  ran = 0
  while True:
    optuna.storages.fail_stale_trials(study)
    trial = claim(study, budget)
    if trial is not None:
      with get_heartbeat_thread(trial._trial_id, storage):  # noqa: SLF001
        run_trial(trial)
      ran += 1
      continue
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
      return ran
    # Others are training: wait, in case one of them died and its trial comes back as a retry.
    time.sleep(idle_seconds)


def budget_counts(study) -> dict:
  """Trials by state, less those closed over budget (counted apart) or retried."""
  counts = {}
  for trial in study.get_trials(deepcopy=False):
    if trial.user_attrs.get('over_budget'):
      key = 'over_budget'
    elif trial.state == optuna.trial.TrialState.FAIL and _was_retried(study, trial):
      key = 'retried'
    else:
      key = trial.state.name.lower()
    counts[key] = counts.get(key, 0) + 1
  return counts


def _was_retried(study, trial) -> bool:
  return any(RetryHeartbeatStaleTrialCallback.retried_trial_number(other) == trial.number
             for other in study.get_trials(deepcopy=False))
