"""Fit a run table with a named law and approach; read and write fit.json."""

import json
import math

from jaxscale.scaling.laws import approach1, approach2, approach3, kaplan

APPROACHES = {1: approach1.fit, 2: approach2.fit, 3: approach3.fit}
LAWS = ('chinchilla', 'kaplan')
# Laws only `--law auto` writes (see analysis/selection.py), which fit.json may also hold.
RECORD_LAWS = LAWS + ('kaplan_nd', 'data_constrained')


def fit_runs(runs, law='chinchilla', approach=3, fixed=None, offset=True, num_bootstrap=1000,
             seed=0, weight_by_stderr=False) -> dict:
  """The fit.json record for `runs` (a table with N, D, loss and optionally C).

  `weight_by_stderr` (Chinchilla Approach 3 only) weights each run by the precision of its loss
  (`approach3.stderr_weights`)."""
  if weight_by_stderr:
    if (law, approach) != ('chinchilla', 3):
      raise ValueError('--weight-by-stderr applies to --law chinchilla --approach 3 only (the '
                       'other fits take one point per budget or envelope).')
    return approach3.fit(runs, fixed, num_bootstrap=num_bootstrap, seed=seed,
                         weight_by_stderr=True)
  if law == 'kaplan':
    return kaplan.fit(runs, fixed, offset, num_bootstrap, seed)
  if law != 'chinchilla':
    raise ValueError(f'Unknown law {law!r}; choose one of: {", ".join(LAWS)}.')
  if approach not in APPROACHES:
    raise ValueError(f'Unknown approach {approach!r}; choose 1, 2 or 3.')
  return APPROACHES[approach](runs, fixed, num_bootstrap=num_bootstrap, seed=seed)


def jsonable(value):
  """NaN and infinity become null, so the output is strict JSON."""
  if isinstance(value, dict):
    return {key: jsonable(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(item) for item in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def save(record: dict, path) -> None:
  with open(path, 'w') as f:
    json.dump(record, f, indent=1)
    f.write('\n')


def load(path) -> dict:
  with open(path) as f:
    record = json.load(f)
  if record.get('law') not in RECORD_LAWS:
    raise ValueError(f'{path} is not a fit.json written by `python -m jaxscale.scaling fit`.')
  missing = null_parameters(record)
  if missing:
    raise ValueError(
        f'{path} holds no value (null: the fit diverged to NaN) for {", ".join(missing)}, so it '
        'cannot predict. Refit with more runs, or pin a parameter (e.g. --fix E=...).')
  return record


def null_parameters(record: dict) -> list[str]:
  """Names of the point-estimate parameters a record holds as null (or NaN)."""
  if record['law'] == 'kaplan':
    groups = {key: record[key] for key in record if key.startswith('L(')}
  elif record['law'] in ('kaplan_nd', 'data_constrained'):
    groups = {'': record}
  elif record.get('approach') == 3:
    groups = {'': {name: record.get(name) for name in ('E', 'A', 'B', 'alpha', 'beta')}}
  else:
    groups = {'': {name: record.get(name) for name in ('a', 'b', 'N_coef', 'D_coef')},
              'frontier.': record.get('frontier') or {}}
  return [f'{prefix}{name}' for prefix, params in groups.items()
          for name in ('E', 'A', 'B', 'alpha', 'beta', 'k', 'gamma', 'a', 'b', 'N_coef', 'D_coef',
                       'N_c', 'D_c', 'alpha_N', 'alpha_D', 'R_star')
          if name in params and not _is_number(params[name])]


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def bootstrap_samples(record: dict) -> list[dict]:
  """The per-resample parameter dicts stored in a fit record (empty without a bootstrap); a null
  (a resample that diverged) reads as NaN, which intervals leave out."""
  columns = record.get('bootstrap', {})
  nan_if_null = lambda value: math.nan if value is None else value
  return [{name: nan_if_null(value) for name, value in zip(columns, values)}
          for values in zip(*columns.values())]
