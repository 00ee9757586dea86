"""`python -m jaxscale.hparams best DIR`: the search's best trial, and the objective against each
hyperparameter.

Prints one JSON object: the trial's number, objective value, parameters, workdir, the overrides
that reproduce it and its full config (the workdir's resolved config.json where the run wrote one),
plus the path of the plot (DIR/search.png unless --out): one panel per hyperparameter, every
finished trial's objective against its value (pruned trials at their last eval, hollow), the best
starred.
"""

import argparse
import json
import os
import sys

import matplotlib
import optuna

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # noqa: E402

from jaxscale.core import paths  # noqa: E402
from jaxscale.hparams import search  # noqa: E402
from jaxscale.hparams import space  # noqa: E402
from jaxscale.scaling.sweeps import run_config  # noqa: E402

_COMPLETE, _PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def read_spec(directory) -> dict:
  with open(os.path.join(paths.resolve_str(directory), 'search.json')) as f:
    return json.load(f)


def best_record(directory) -> dict:
  study = search.load_study(directory)
  if not study.get_trials(deepcopy=False, states=(_COMPLETE,)):
    raise ValueError(f'The search in {directory} has no completed trial yet.')
  trial, spec = study.best_trial, read_spec(directory)
  overrides = list(spec['overrides']) + space.overrides(trial.params)
  workdir = trial.user_attrs.get('workdir', search.trial_dir(directory, trial.number))
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  else:
    config = run_config.apply_overrides(
        run_config.load_config_file(spec['base_config']), overrides).to_dict()
  return {'number': trial.number, 'value': trial.value, 'objective': spec['search']['objective'],
          'params': trial.params, 'workdir': workdir, 'base_config': spec['base_config'],
          'overrides': overrides, 'config': config}


def plot(directory, out) -> str:
  """objective_vs_<param> panels in one PNG at `out`."""
  study = search.load_study(directory)
  objective = read_spec(directory)['search']['objective']
  trials = study.get_trials(deepcopy=False, states=(_COMPLETE, _PRUNED))
  names = sorted({name for t in trials for name in t.params})
  figure, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.6),
                              squeeze=False)
  best = study.best_trial if any(t.state == _COMPLETE for t in trials) else None
  for axis, name in zip(axes[0], names):
    for state, style in ((_COMPLETE, {'color': 'C0'}),
                         (_PRUNED, {'facecolors': 'none', 'edgecolors': 'C1'})):
      points = [(t.params[name], _value(t)) for t in trials if t.state == state
                and name in t.params and _value(t) is not None]
      if points:
        x, y = zip(*points)
        axis.scatter(x, y, label=state.name.lower(), **style)
    if best is not None and name in best.params:
      axis.scatter([best.params[name]], [best.value], marker='*', s=200, color='C3', label='best')
    distribution = next(t.distributions[name] for t in trials if name in t.distributions)
    values = [t.params[name] for t in trials if name in t.params]
    # A log axis over less than a decade has no labelled ticks worth reading.
    if getattr(distribution, 'log', False) and max(values) >= 10 * min(values):
      axis.set_xscale('log')
    axis.tick_params(axis='x', labelrotation=30)
    axis.set_xlabel(name)
    axis.set_ylabel(objective)
    axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(out, dpi=110)
  plt.close(figure)
  return out


def _value(trial):
  if trial.state == _COMPLETE:
    return trial.value
  values = trial.intermediate_values
  return values[max(values)] if values else None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxscale.hparams best', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dir', type=paths.resolve_str, help='Search directory.')
  parser.add_argument('--out', type=paths.resolve_str, help='PNG to write (DIR/search.png).')
  args = parser.parse_args(argv)
  try:
    record = best_record(args.dir)
    record['plot'] = plot(args.dir, args.out or os.path.join(args.dir, 'search.png'))
  except (ValueError, FileNotFoundError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(json.dumps(record, indent=1))
  return 0
