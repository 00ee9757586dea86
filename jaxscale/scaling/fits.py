"""Fit a run table with a named law and approach; read and write fit.json."""

import json

from jaxscale.scaling import approach1
from jaxscale.scaling import approach2
from jaxscale.scaling import approach3
from jaxscale.scaling import kaplan

APPROACHES = {1: approach1.fit, 2: approach2.fit, 3: approach3.fit}
LAWS = ('chinchilla', 'kaplan')


def fit_runs(runs, law='chinchilla', approach=3, fixed=None, offset=True, num_bootstrap=1000,
             seed=0) -> dict:
  """The fit.json record for `runs` (a table with N, D, loss and optionally C)."""
  if law == 'kaplan':
    return kaplan.fit(runs, fixed, offset, num_bootstrap, seed)
  if law != 'chinchilla':
    raise ValueError(f'Unknown law {law!r}; choose one of: {", ".join(LAWS)}.')
  if approach not in APPROACHES:
    raise ValueError(f'Unknown approach {approach!r}; choose 1, 2 or 3.')
  return APPROACHES[approach](runs, fixed, num_bootstrap=num_bootstrap, seed=seed)


def save(record: dict, path) -> None:
  with open(path, 'w') as f:
    json.dump(record, f, indent=1)
    f.write('\n')


def load(path) -> dict:
  with open(path) as f:
    record = json.load(f)
  if record.get('law') not in LAWS:
    raise ValueError(f'{path} is not a fit.json written by `python -m jaxscale.scaling fit`.')
  return record


def bootstrap_samples(record: dict) -> list[dict]:
  """The per-resample parameter dicts stored in a fit record (empty without a bootstrap)."""
  columns = record.get('bootstrap', {})
  return [dict(zip(columns, values)) for values in zip(*columns.values())]
