"""A hyperparameter search over a sweep spec's search space, stored as an Optuna study.

The study lives in the search directory (`DIR/study.db`, Optuna's SQLite storage), so a killed
search resumes where it stopped: trials already told are kept, and a trial the kill left RUNNING
is run again with the same parameters in the same workdir (the trainer resumes from its own
checkpoints), under the same trial number. Nothing is lost and nothing runs twice. One search at
a time may use a directory (`DIR/search.lock`).

The spec is a sweep spec (`base_config`, `overrides`) with a `search` section:
  method          'grid' | 'random' | 'tpe' (Optuna's TPE sampler, Bayesian)
  params          the search space (see `space.py`)
  grid_points     'grid': values per range
  num_trials      trials to finish (complete, pruned or failed); 'grid': at most the grid's size
  objective       the run's metric to optimise: a summary.json / eval-row key, e.g. 'eval_loss'
  direction       'minimize' | 'maximize'
  pruner          'none' | 'median' | 'successive_halving': stops trials whose eval rows trail
  pruner_startup_trials, pruner_warmup_steps   the median pruner's grace (trials, steps)
  seed            the sampler's seed
Trial i trains in DIR/trials/<i>; its parameters become `--config.key=value` overrides.

Distributed: `run_worker` is one of any number of workers, on any machines, sharing one study
storage (SQLite, PostgreSQL, or a journal file; `search_workers` has the exact budget, the
heartbeats and the retries of a dead worker's trial). The single-process search above keeps its
lock and resumes its own left-over trial in place.
"""

import contextlib
import fcntl
import json
import os
import sys

import ml_collections
import optuna

from jaxscale.core import paths
from jaxscale.hparams import search_workers, space, trial_runner
from jaxscale.scaling.sweeps import run_config

METHODS = ('grid', 'random', 'tpe')
PRUNERS = ('none', 'median', 'successive_halving')
DIRECTIONS = ('minimize', 'maximize')
STUDY_NAME = 'search'
_DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
         optuna.trial.TrialState.FAIL)


def storage_url(directory) -> str:
  return f'sqlite:///{os.path.join(paths.resolve_str(directory), "study.db")}'


def trial_dir(directory, number: int) -> str:
  return os.path.join(paths.resolve_str(directory), 'trials', f'{number:04d}')


def spec_record(spec) -> dict:
  """What search.json records: the spec with its base config made absolute."""
  record = json.loads(spec.to_json_best_effort())
  record['base_config'] = os.path.abspath(spec.base_config)
  return record


def _fixed_part(record: dict) -> dict:
  """The record less num_trials, which a resumed search may raise to run more trials."""
  search = {k: v for k, v in record.get('search', {}).items() if k != 'num_trials'}
  return {**record, 'search': search}


# spec.search keys and their defaults (a spec may leave any out but `params`).
DEFAULTS = {'method': 'tpe', 'params': (), 'grid_points': 4, 'num_trials': 0,
            'objective': 'eval_loss', 'direction': 'minimize', 'pruner': 'none',
            'pruner_startup_trials': 5, 'pruner_warmup_steps': 0, 'seed': 0}


def with_defaults(spec):
  """A copy of the spec whose `search` has every key, or an error naming an unknown one."""
  spec = ml_collections.ConfigDict(spec.to_dict())
  unknown = sorted(set(spec.search) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'spec.search has unknown keys {unknown}; known: {", ".join(DEFAULTS)}.')
  spec.search = ml_collections.ConfigDict({**DEFAULTS, **spec.search.to_dict()})
  check_settings(spec.search)
  return spec


def check_settings(search) -> None:
  for name, value, allowed in (('method', search.method, METHODS),
                               ('pruner', search.pruner, PRUNERS),
                               ('direction', search.direction, DIRECTIONS)):
    if value not in allowed:
      raise ValueError(f'spec.search.{name}={value!r}; choose one of: {", ".join(allowed)}.')


def make_sampler(search, seed_offset: int = 0):
  """The spec's sampler, seeded with spec.search.seed + `seed_offset`: a resumed search offsets
  by the trials already in the study, so it does not draw the first process's points again."""
  seed = search.seed + seed_offset
  if search.method in ('grid', 'random'):  # A grid's points are enqueued (see open_study).
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed)


def make_pruner(search):
  if search.pruner == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials,
                                       n_warmup_steps=search.pruner_warmup_steps)
  if search.pruner == 'successive_halving':
    return optuna.pruners.SuccessiveHalvingPruner()
  return optuna.pruners.NopPruner()


def open_study(directory, spec) -> optuna.Study:
  """The directory's study (created on first use) with the spec's sampler and pruner."""
  spec = with_defaults(spec)
  os.makedirs(directory, exist_ok=True)
  study = optuna.create_study(
      study_name=STUDY_NAME, storage=storage_url(directory), load_if_exists=True,
      sampler=make_sampler(spec.search), pruner=make_pruner(spec.search),
      direction=spec.search.direction)
  study.sampler = make_sampler(spec.search, seed_offset=len(study.get_trials(deepcopy=False)))
  points = space.all_grid_points(space.parse(spec.search.params), spec.search.grid_points)
  if spec.search.method == 'grid' and len(study.get_trials(deepcopy=False)) < len(points):
    # Every point as a waiting trial, in order (optuna's GridSampler stops studies only inside
    # study.optimize, which cannot resume a trial a kill left running). A point already in the
    # study, from before a kill, is not enqueued again.
    for point in points:
      study.enqueue_trial(point, skip_if_exists=True)
  return study


def load_study(directory) -> optuna.Study:
  path = os.path.join(paths.resolve_str(directory), 'study.db')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {directory} holds no search; start one with '
                            '`python -m jaxscale.hparams search SPEC --dir DIR`.')
  return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(directory))


@contextlib.contextmanager
def _exclusive(directory):
  """Holds DIR/search.lock; the OS releases it when the process dies, however it dies."""
  with open(os.path.join(directory, 'search.lock'), 'w') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ValueError(f'Another search is running in {directory}; wait for it or stop it.') from None
    yield


def _record_spec(directory, spec) -> None:
  """Writes search.json, or refuses a spec that differs from the one the study was started with."""
  path, record = os.path.join(directory, 'search.json'), spec_record(spec)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    old, new = _fixed_part(old), _fixed_part(record)
    if old != new:
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise ValueError(f'{directory} holds a search with a different spec (keys {changed} differ); '
                       'use a new --dir, or the spec it was started with.')
    return
  with open(f'{path}.{os.getpid()}', 'w') as f:  # Workers may start together: write whole files.
    json.dump(record, f, indent=1)
  os.replace(f'{path}.{os.getpid()}', path)


def num_done(study) -> int:
  return len(study.get_trials(deepcopy=False, states=_DONE))


def _prepare(spec, directory, num_trials, runner, stream, allow_test_objective):
  """What a search or a worker starts from: the spec with defaults, its parameter space, the
  directory (created), the log stream, the trial target and the trial runner. Refuses a
  test-split objective unless allowed (`check_not_test`)."""
  spec = with_defaults(spec)
  if not allow_test_objective:
    check_not_test(spec.search.objective, configured_eval_split(spec))
  params = space.parse(spec.search.params)
  directory = paths.resolve_str(directory)
  os.makedirs(directory, exist_ok=True)
  target = _target(spec, params, num_trials)
  runner = runner or trial_runner.TrainerRunner(os.path.abspath(spec.base_config))
  return spec, params, directory, stream or sys.stderr, target, runner


def run_search(spec, directory, num_trials=None, runner=None, stream=None,
               allow_test_objective: bool = False) -> dict:
  """Runs (or resumes) the search until `num_trials` trials are done; returns a summary.

  Refuses an eval objective measured on the test split (see `check_not_test`) unless
  `allow_test_objective`."""
  spec, params, directory, stream, target, runner = _prepare(
      spec, directory, num_trials, runner, stream, allow_test_objective)
  with _exclusive(directory):
    _record_spec(directory, spec)
    study = open_study(directory, spec)
    # A RUNNING trial here was left by a killed search (the lock rules out a live one).
    for left in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
      print(f'[search] resuming trial {left.number}, left running by a stopped search',
            file=stream, flush=True)
      # Trial(study, id) reattaches to the stored trial: its suggest_* calls return the stored
      # parameters, and its number and grid point stay its own.
      reattached = optuna.trial.Trial(study, left._trial_id)  # noqa: SLF001
      _run_trial(study, reattached, params, spec, directory, runner, stream,
                 already_reported=set(left.intermediate_values),
                 allow_test_objective=allow_test_objective)
    while num_done(study) < target:
      _run_trial(study, study.ask(), params, spec, directory, runner, stream,
                 allow_test_objective=allow_test_objective)
  return summarise(study)


def check_not_test(objective: str, eval_split: str) -> None:
  """Raises if `objective` is an eval metric and the runs evaluate on the test split: choosing
  hyperparameters by the test score leaks it into the number reported as held out."""
  if objective.startswith('eval_') and eval_split == 'test':
    raise ValueError(
        f'spec.search.objective={objective!r} would be measured on the test split '
        "(dataset.eval_split='test'): tuning on test leaks it into the reported number. Search "
        "on the validation split (dataset.eval_split='', the default), or pass "
        '--allow_test_objective to do it anyway.')


def configured_eval_split(spec) -> str:
  """dataset.eval_split as the base config and the spec's overrides set it ('' = default)."""
  config = run_config.apply_overrides(run_config.load_config_file(spec.base_config),
                                      list(spec.overrides))
  return config.dataset.get('eval_split', '')


def _recorded_eval_split(workdir) -> str:
  """The eval split a trial's config.json records (resolved by the trainer); '' if none."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    return json.load(f).get('dataset', {}).get('eval_split', '')


def _run_trial(study, trial, params, spec, directory, runner, stream, already_reported=(),
               allow_test_objective: bool = False):
  values = space.suggest_all(params, trial)
  # A retry of a trial whose worker died carries its workdir, and resumes its checkpoints there.
  workdir = trial.user_attrs.get('workdir') or trial_dir(directory, trial.number)
  trial.set_user_attr('workdir', workdir)
  overrides = list(spec.overrides) + space.overrides(values)
  objective = spec.search.objective
  reported = set(already_reported)

  def on_eval(step, row):
    if objective not in row or step in reported:
      return
    if not allow_test_objective:  # A dataset whose own eval split is test (config.json says).
      check_not_test(objective, _recorded_eval_split(workdir))
    reported.add(step)
    trial.report(float(row[objective]), step)
    if trial.should_prune():
      raise optuna.TrialPruned(f'step {step}: {objective} {row[objective]:.4f}')

  print(f'[search] trial {trial.number}: {values} in {workdir}', file=stream, flush=True)
  try:
    if not trial_runner.read_summary(workdir).get('finished'):
      runner(workdir, overrides, on_eval)
    if not allow_test_objective:
      check_not_test(objective, _recorded_eval_split(workdir))
    value = trial_runner.read_objective(workdir, objective)
  except optuna.TrialPruned as pruned:
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    print(f'[search] trial {trial.number} pruned at {pruned}', file=stream, flush=True)
    return
  except trial_runner.RunFailed as failure:
    trial.set_user_attr('error', str(failure)[-2000:])
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    print(f'[search] trial {trial.number} FAILED: {failure}', file=stream, flush=True)
    return
  study.tell(trial, value)
  print(f'[search] trial {trial.number}: {objective} {value:.4f}', file=stream, flush=True)


def run_worker(spec, directory, storage_url=None, num_trials=None, worker_id=None, runner=None,
               stream=None, heartbeat_interval=search_workers.HEARTBEAT_INTERVAL_S,
               grace_period=search_workers.GRACE_PERIOD_S, allow_test_objective: bool = False) -> dict:
  """One worker of a shared search (`search_workers`): claims and runs trials from the study in
  `storage_url` (default DIR/study.db) until its budget is spent; returns the summary. Refuses a
  test-split objective as `run_search` does."""
  spec, params, directory, stream, target, runner = _prepare(
      spec, directory, num_trials, runner, stream, allow_test_objective)
  storage = search_workers.open_storage(storage_url or search_workers.default_storage(directory),
                                        heartbeat_interval, grace_period)
  _record_spec(directory, spec)
  study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                              pruner=make_pruner(spec.search), direction=spec.search.direction)
  seed = search_workers.worker_seed(spec.search.seed, worker_id,
                                    len(study.get_trials(deepcopy=False)))
  study.sampler = (optuna.samplers.TPESampler(seed=seed) if spec.search.method == 'tpe' else
                   optuna.samplers.RandomSampler(seed=seed))
  if spec.search.method == 'grid':
    for point in space.all_grid_points(params, spec.search.grid_points)[:target]:
      study.enqueue_trial(point, skip_if_exists=True)
  name = f'worker {worker_id}' if worker_id is not None else f'worker pid {os.getpid()}'
  print(f'[search] {name} joined the study in {storage_url or directory}', file=stream, flush=True)

  def run(trial):
    trial.set_user_attr('worker', name)  # Which worker ran it (a retry records its own).
    try:
      _run_trial(study, trial, params, spec, directory, runner, stream,
                 allow_test_objective=allow_test_objective)
    except optuna.exceptions.UpdateFinishedTrialError:
      # Judged dead (no heartbeat for the grace period) and retried elsewhere: its retry counts.
      print(f'[search] trial {trial.number} was failed as stale meanwhile; its retry counts',
            file=stream, flush=True)

  ran = search_workers.worker_loop(study, target, run, stream)
  print(f'[search] {name} ran {ran} trials; the budget of {target} is spent', file=stream,
        flush=True)
  return {**summarise(study), 'budget': search_workers.budget_counts(study)}


def _target(spec, params, num_trials) -> int:
  target = num_trials or spec.search.num_trials
  if spec.search.method == 'grid':
    target = min(target or sys.maxsize, space.grid_size(params, spec.search.grid_points))
  if not target:
    raise ValueError('Set spec.search.num_trials or pass --trials N.')
  return target


def summarise(study) -> dict:
  trials = study.get_trials(deepcopy=False)
  counts = {state.name.lower(): sum(t.state == state for t in trials)
            for state in optuna.trial.TrialState}
  summary = {'trials': len(trials), **{k: v for k, v in counts.items() if v}}
  completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  if completed:
    best = study.best_trial
    summary['best'] = {'number': best.number, 'value': best.value, 'params': best.params}
  return summary
