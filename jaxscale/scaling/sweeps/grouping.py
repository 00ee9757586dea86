"""Which of a sweep's runs train together in one compiled program.

Runs whose configs are equal once the values a multi run varies per model are removed (learning
rate, weight decay, seed, init scale: `multi_support.ARRAY_HPARAMS`) differ only in arrays, so
one `python -m jaxscale.hparams multi` process trains up to `max_models` of them (`multi.py`),
each writing its own workdir as its solo run would. A run trains alone (`python -m
jaxscale.main`) when it needs checkpoints or what a multi run refuses: a cooldown trunk or
branch, a workdir holding checkpoints to resume from, init_from, LoRA, frozen parameters, a
multi-device mesh, an optimizer whose weight decay is not injectable; or when no other run
shares its program.
"""

import dataclasses
import json
import os

from jaxscale.scaling.sweeps import multi_support, run_config, sweep as sweep_lib

DEFAULT_MAX_MODELS = 16


@dataclasses.dataclass(frozen=True)
class Launch:
  """One trainer process: a solo run, or several runs in one multi program."""
  runs: tuple[dict, ...]
  values: dict = dataclasses.field(default_factory=dict)  # multi --values: name -> [per run].

  @property
  def name(self) -> str:
    return self.runs[0]['name']

  @property
  def is_group(self) -> bool:
    return len(self.runs) > 1

  def command(self, sweep: dict, workdirs: list[str]) -> list[str]:
    if not self.is_group:
      return sweep_lib.command(sweep, self.runs[0], workdirs[0])
    varying = {multi_support.ARRAY_HPARAMS[name] for name in self.values}
    shared = [item for item in self.runs[0]['overrides']
              if item.split('=', 1)[0] not in varying]
    return [sweep['python'], '-m', 'jaxscale.hparams', 'multi',
            f'--config={sweep["base_config"]}', f'--workdirs={",".join(workdirs)}',
            *(f'--values={name}={",".join(repr(v) for v in values)}'
              for name, values in self.values.items()),
            *(f'--config.{item}' for item in shared)]


def options(sweep: dict, multi: bool | None = None, max_models: int | None = None):
  """(multi, max_models): the caller's choice, else the spec's `multi` and
  `max_models_per_program`, else on and DEFAULT_MAX_MODELS."""
  spec = sweep.get('spec', {})
  multi = spec.get('multi', True) if multi is None else multi
  if max_models is None:
    max_models = spec.get('max_models_per_program', DEFAULT_MAX_MODELS)
  if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1:
    raise ValueError(f'max_models_per_program={max_models!r}: give a positive integer (1 trains '
                     'every run in its own process).')
  return bool(multi), max_models


class Grouper:
  """Splits runs into launches; remembers each run's program so a sweep parses configs once."""

  def __init__(self, sweep: dict, sweep_dir, max_models: int = DEFAULT_MAX_MODELS):
    self._sweep, self._sweep_dir, self._max_models = sweep, sweep_dir, max_models
    self._base = None
    self._keys = {}  # Run name -> its program's key, or None if it trains alone.
    self._configs = {}

  def launches(self, runs: list[dict]) -> list[Launch]:
    """Launches for `runs`, ordered by their first run's place in `runs`."""
    trunks = {run['branch_from']['run'] for run in self._sweep['runs'] if 'branch_from' in run}
    groups, launches = {}, []
    for run in runs:
      key = None if run['name'] in trunks else self._key(run)
      if key is None:
        launches.append([run])
        continue
      members = groups.get(key)
      if members is None or len(members) == self._max_models:
        members = groups[key] = []
        launches.append(members)
      members.append(run)
    return [self._launch(members) for members in launches]

  def _launch(self, members) -> Launch:
    if len(members) == 1:
      return Launch(tuple(members))
    configs = [self._configs[run['name']] for run in members]
    values = {}
    for name, key in multi_support.ARRAY_HPARAMS.items():
      per_run = [multi_support.get(c, key, 1.0) for c in configs]
      if len(set(per_run)) > 1:
        values[name] = per_run
    return Launch(tuple(members), values)

  def _key(self, run):
    if run['name'] not in self._keys:
      self._keys[run['name']] = self._program_key(run)
    return self._keys[run['name']]

  def _program_key(self, run):
    workdir = os.path.join(self._sweep_dir, 'runs', run['name'])
    checkpoints = os.path.join(workdir, 'checkpoints')
    if 'branch_from' in run or (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
      return None  # Needs or resumes from checkpoints, which only the trainer keeps.
    if ',' in workdir:
      return None  # multi's --workdirs is a comma-separated list.
    if self._base is None:
      self._base = run_config.load_config_file(self._sweep['base_config'])
    config = run_config.apply_overrides(self._base, run['overrides'])
    if multi_support.unsupported(config):
      return None
    self._configs[run['name']] = config
    fields = config.to_dict()
    for key in multi_support.ARRAY_HPARAMS.values():
      *parents, leaf = key.split('.')
      node = fields
      for parent in parents:
        node = node.get(parent, {})
      node.pop(leaf, None)
    return json.dumps(fields, sort_keys=True, default=repr)
