"""A sweep spec's search space: which config keys a search varies, over what values.

`spec.search.params` holds one tuple per hyperparameter (the key is a trainer config key):
  ('optimizer.learning_rate', 'log', 1e-4, 1e-1)   log-uniform float in [low, high]
  ('optimizer.weight_decay', 'float', 0.0, 0.1)    uniform float
  ('optimizer.warmup_steps', 'int', 0, 100)        uniform integer
  ('batch_size', 'choice', (8, 16, 32))            one of the listed values
'grid' searches every combination: a choice's values, and `spec.search.grid_points` values spread
evenly (geometrically for 'log') over each range.
"""

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
import optuna

KINDS = ('log', 'float', 'int', 'choice')


@dataclasses.dataclass(frozen=True)
class Param:
  key: str                   # Trainer config key, e.g. 'optimizer.learning_rate'.
  kind: str                  # One of KINDS.
  low: float = math.nan
  high: float = math.nan
  choices: tuple = ()

  def suggest(self, trial: optuna.Trial):
    if self.kind == 'choice':
      return trial.suggest_categorical(self.key, list(self.choices))
    if self.kind == 'int':
      return trial.suggest_int(self.key, int(self.low), int(self.high))
    return trial.suggest_float(self.key, self.low, self.high, log=self.kind == 'log')

  def grid(self, points: int) -> list:
    if self.kind == 'choice':
      return list(self.choices)
    if self.kind == 'int':
      return sorted({int(round(v)) for v in np.linspace(self.low, self.high, points)})
    spread = np.geomspace if self.kind == 'log' else np.linspace
    return [float(v) for v in spread(self.low, self.high, points)]


def parse(entries) -> list[Param]:
  """Params from spec.search.params; a malformed entry fails naming it and the accepted forms."""
  params = []
  for entry in entries:
    entry = tuple(entry)
    form = ("expected (key, 'log'|'float'|'int', low, high) or (key, 'choice', (values...)); "
            f'got {entry!r} in spec.search.params')
    if len(entry) < 3 or entry[1] not in KINDS:
      raise ValueError(f'Search parameter: {form}.')
    key, kind = entry[0], entry[1]
    if kind == 'choice':
      if len(entry) != 3 or not tuple(entry[2]):
        raise ValueError(f'Search parameter {key!r}: {form}.')
      params.append(Param(key, kind, choices=tuple(entry[2])))
      continue
    if len(entry) != 4 or not float(entry[2]) <= float(entry[3]):
      raise ValueError(f'Search parameter {key!r}: {form} with low <= high.')
    if kind == 'log' and float(entry[2]) <= 0:
      raise ValueError(f"Search parameter {key!r}: a 'log' range needs low > 0; got {entry[2]}.")
    params.append(Param(key, kind, float(entry[2]), float(entry[3])))
  if not params:
    raise ValueError('spec.search.params is empty: name at least one hyperparameter to search.')
  keys = [p.key for p in params]
  if len(set(keys)) != len(keys):
    raise ValueError(f'spec.search.params names a key twice: {keys}.')
  return params


def grid_space(params: list[Param], points: int) -> dict[str, list]:
  """optuna.samplers.GridSampler's search space."""
  return {p.key: p.grid(points) for p in params}


def grid_size(params: list[Param], points: int) -> int:
  return math.prod(len(values) for values in grid_space(params, points).values())


def suggest_all(params: list[Param], trial: optuna.Trial) -> dict[str, Any]:
  return {p.key: p.suggest(trial) for p in params}


def overrides(values: dict[str, Any]) -> list[str]:
  """'key=value' strings (the trainer's --config.key=value) for a trial's values."""
  return [f'{key}={_text(value)}' for key, value in values.items()]


def _text(value) -> str:
  if isinstance(value, float):
    return repr(value)  # Round-trips exactly.
  return str(value)


def all_grid_points(params: list[Param], points: int) -> list[dict]:
  space = grid_space(params, points)
  return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
