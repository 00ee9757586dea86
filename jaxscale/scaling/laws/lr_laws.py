"""Power laws of the optimal learning rate and batch size against compute (DeepSeek LLM 2024,
eq. 1): eta_opt = a * C^b and B_opt = c * C^d, fitted from finished runs at several budgets.

`python -m jaxscale.hparams lr-laws DIR [--out FILE]` reads every finished run under DIR (a
search's trials/, a sweep's runs/): its compute (summary.json's flops_seen), objective (eval_loss)
and hyperparameters (config.json's optimizer.learning_rate and batch_size). Runs whose compute
lies within `--budget-tolerance` of each other form one budget; per budget the near-optimal runs
(objective within `--near` of the budget's best, as DeepSeek's fit takes) give the optimum as the
geometric mean of their values. The laws are fitted with `power_law_fit` (offset pinned to 0) and
written to DIR/hparam_laws.json, which `python -m jaxscale.scaling predict --emit-config ...
--sweep DIR` then uses to set the emitted run's learning rate and batch size.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

from jaxscale.core import paths
from jaxscale.scaling.laws import power_law_fit

LAWS_FILE = 'hparam_laws.json'
# Law name -> (config key it sets, names of its coefficient and exponent).
LAWS = {'learning_rate': ('optimizer.learning_rate', 'a', 'b'),
        'batch_size': ('batch_size', 'c', 'd')}


def finished_runs(directory, objective='eval_loss') -> list[dict]:
  """{C, loss, learning_rate, batch_size, workdir} of each finished run under `directory`."""
  runs = []
  for root, _, files in os.walk(paths.resolve_str(directory)):
    if 'summary.json' not in files or 'config.json' not in files:
      continue
    with open(os.path.join(root, 'summary.json')) as f:
      summary = json.load(f)
    with open(os.path.join(root, 'config.json')) as f:
      config = json.load(f)
    if summary.get('finished') and summary.get(objective) is not None:
      runs.append({'C': float(summary['flops_seen']), 'loss': float(summary[objective]),
                   'learning_rate': float(config['optimizer']['learning_rate']),
                   'batch_size': float(config['batch_size']), 'workdir': root})
  return sorted(runs, key=lambda run: run['C'])


def budgets(runs: list[dict], tolerance: float) -> list[list[dict]]:
  """Runs grouped by compute: a run within (1 + tolerance) of its group's smallest joins it."""
  groups = []
  for run in runs:
    if groups and run['C'] <= groups[-1][0]['C'] * (1 + tolerance):
      groups[-1].append(run)
    else:
      groups.append([run])
  return groups


def optimum(group: list[dict], near: float) -> dict:
  """The budget's optimal hyperparameters: the geometric mean over its near-optimal runs."""
  best = min(run['loss'] for run in group)
  chosen = [run for run in group if run['loss'] <= best * (1 + near)]
  return {'C': float(np.exp(np.mean([math.log(run['C']) for run in group]))), 'loss': best,
          'runs': len(group), 'near_optimal': len(chosen),
          **{name: float(np.exp(np.mean([math.log(run[name]) for run in chosen])))
             for name in LAWS}}


def fit(points: list[dict]) -> dict:
  """{law: {coefficient, exponent}} from the per-budget optima; a quantity that never varied
  (e.g. batch size left fixed) gets None."""

  compute = np.array([p['C'] for p in points])
  laws = {}
  for name, (_, coefficient, exponent) in LAWS.items():
    values = np.array([p[name] for p in points])
    if np.allclose(values, values[0], rtol=1e-9):
      laws[name] = None
      continue
    # value = k / C^gamma with no offset: the coefficient is k, the exponent -gamma.
    fitted = power_law_fit.fit('C', compute, values, fixed={'E': 0.0}).params
    laws[name] = {coefficient: fitted['k'], exponent: -fitted['gamma']}
  return laws


def fit_directory(directory, objective='eval_loss', tolerance=0.25, near=0.0025) -> dict:
  groups = budgets(finished_runs(directory, objective), tolerance)
  if len(groups) < 3:
    raise ValueError(f'{directory} has finished runs at {len(groups)} compute budget(s); the '
                     'laws need at least 3 (runs at several budgets, several values each).')
  points = [optimum(group, near) for group in groups]
  return {'objective': objective, 'budget_tolerance': tolerance, 'near': near,
          'laws': fit(points), 'budgets': points}


def value_at(law: dict, compute: float) -> float:
  coefficient, exponent = (law[key] for key in sorted(law))  # ('a', 'b') or ('c', 'd').
  return coefficient * compute ** exponent


def overrides_at(sweep_dir, compute: float) -> list[str]:
  """'key=value' overrides for a run of `compute` FLOPs from DIR/hparam_laws.json; [] without
  one. The batch size is rounded to a power of two (it must divide the mesh)."""
  path = os.path.join(paths.resolve_str(sweep_dir), LAWS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    laws = json.load(f)['laws']
  overrides = []
  if laws.get('learning_rate'):
    overrides.append(f'optimizer.learning_rate={value_at(laws["learning_rate"], compute):.4g}')
  if laws.get('batch_size'):
    batch = value_at(laws['batch_size'], compute)
    overrides.append(f'batch_size={2 ** max(0, round(math.log2(batch)))}')
  return overrides


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxscale.hparams lr-laws', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dir', type=paths.resolve_str, help='Directory of finished runs.')
  parser.add_argument('--out', type=paths.resolve_str, help=f'JSON to write (DIR/{LAWS_FILE}).')
  parser.add_argument('--objective', default='eval_loss', help='summary.json key to minimise.')
  parser.add_argument('--budget-tolerance', type=float, default=0.25,
                      help='Relative compute difference within which runs share a budget.')
  parser.add_argument('--near', type=float, default=0.0025,
                      help='Runs within this fraction of the best objective count as optimal.')
  args = parser.parse_args(argv)
  try:
    record = fit_directory(args.dir, args.objective, args.budget_tolerance, args.near)
  except (ValueError, FileNotFoundError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  out = args.out or os.path.join(args.dir, LAWS_FILE)
  with open(out, 'w') as f:
    json.dump(record, f, indent=1)
  print(json.dumps({'out': out, **record}, indent=1))
  return 0
