"""From a fitted sweep and a target budget to a runnable config for the compute-optimal run.

The fit gives N_opt(C); the sweep's own shape rule turns it into a model (so the run belongs to
the family the law was measured on), and the exact FLOPs per token of that model fix the steps
that spend the budget. The emitted file is an ordinary config: the sweep's base config with the
sweep's overrides and the run's, for `python -m jaxscale.main --config FILE --workdir DIR`.
Where the sweep directory holds hparam_laws.json (`python -m jaxscale.hparams lr-laws`), the run's
learning rate and batch size come from those laws at the budget.
"""

import math

import ml_collections

from jaxscale.scaling.analysis import predict
from jaxscale.scaling.laws import lr_laws
from jaxscale.scaling.sweeps import run_config, shapes, sweep as sweep_lib

_TEMPLATE = '''"""Compute-optimal run for C = {compute:.3g} FLOPs.

N = {N:,} parameters, D = {D:,} tokens. {loss_text}
From {fit_path}, fitted to the sweep {sweep_dir}.

  python -m jaxscale.main --config {path} --workdir DIR
"""

from jaxscale.scaling.sweeps import run_config

BASE_CONFIG = {base_config!r}
OVERRIDES = [
{overrides}]


def get_config():
  return run_config.apply_overrides(run_config.load_config_file(BASE_CONFIG), OVERRIDES)
'''


def compute_optimal_run(record: dict, sweep_dir, compute: float) -> dict:
  """The planned run (as in sweep.json) for `compute`, with the fit's prediction attached."""

  sweep = sweep_lib.load(sweep_dir)
  spec = ml_collections.ConfigDict(sweep['spec'])
  # Fitted optimal learning rate and batch size for this budget (DIR/hparam_laws.json), if any.
  spec.overrides = tuple(spec.overrides) + tuple(lr_laws.overrides_at(sweep_dir, compute))
  config = run_config.apply_overrides(run_config.load_config_file(sweep['base_config']),
                                      spec.overrides)
  prediction = predict.at_compute(record, compute)
  # The fit's N is collect's N: total parameters, whatever the sweep's targets counted.
  shape = shapes.shape_for_params(prediction['N_opt'], config.model, sweep['vocab_size'],
                                  shapes.ShapeRule.from_config(spec.shape), 'total')
  run = sweep_lib.planned_run(config, sweep['vocab_size'], shape,
                              {'budget': compute, 'size': prediction['N_opt']}, spec)
  return {**run, 'base_config': sweep['base_config'], 'prediction': prediction}


def write(run: dict, path, fit_path, sweep_dir) -> None:
  prediction = run['prediction']
  loss_text = 'The fit has no loss frontier, so no loss prediction.'
  if math.isfinite(prediction['loss']):
    loss_text = f'Predicted eval loss {prediction["loss"]:.4f}'
    if 'pi' in prediction:
      low, high = prediction['pi']
      loss_text += (f' (backtest-calibrated {prediction["nominal_coverage"]:.0%} interval '
                    f'{low:.4f} to {high:.4f})')
    elif 'ci' in prediction:
      low, high = prediction['ci']['loss']
      loss_text += f' (bootstrap interval {low:.4f} to {high:.4f})'
    loss_text += '.'
  with open(path, 'w') as f:
    f.write(_TEMPLATE.format(
        compute=run['budget'], N=run['N'], D=run['D'], loss_text=loss_text, fit_path=fit_path,
        sweep_dir=sweep_dir, path=path, base_config=run['base_config'],
        overrides=''.join(f'    {override!r},\n' for override in run['overrides'])))
