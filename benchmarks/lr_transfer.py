"""Learning-rate transfer across width, SP vs μP, as JSON lines: one per run, then one summary line
per parametrisation (the optimal learning rate per width, refined with a parabola in log2 lr, and
its drift per doubling of width), and a loss-vs-learning-rate plot.

  python benchmarks/lr_transfer.py --spec configs/sweeps/lr_transfer.py --out sweeps/lr_transfer
  python benchmarks/lr_transfer.py --widths=32,64 --learning_rates=0.004,0.016 --steps=20  # quick

The spec (configs/sweeps/lr_transfer.py) names a base run config and overrides, the widths,
learning rates and parametrisations; every combination is one run, trained in-process through
`loop.run` in <out>/<parametrization>_w<width>_lr<lr>, its loss the final eval loss of
summary.json. A run whose workdir already holds a finished summary.json is not run again, so a
killed sweep resumes (`--finished_only` summarises what is done without training). A diverged run
(non-finite loss) counts as an infinite loss.
"""

import json
import math
import pathlib
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # Run as a script from anywhere.

_SPEC = flags.DEFINE_string('spec', str(ROOT / 'configs/sweeps/lr_transfer.py'), 'Sweep spec file.')
_OUT = flags.DEFINE_string('out', '/tmp/jaxscale_lr_transfer', 'Directory for the workdirs.')
_PNG = flags.DEFINE_string('png', '', 'Plot path; default <out>/lr_transfer.png.')
_WIDTHS = flags.DEFINE_list('widths', [], "Widths to run; default the spec's.")
_LEARNING_RATES = flags.DEFINE_list('learning_rates', [], "Learning rates; default the spec's.")
_PARAMETRIZATIONS = flags.DEFINE_list('parametrizations', [], "Default the spec's.")
_STEPS = flags.DEFINE_integer('steps', 0, "Train steps per run; 0: the spec's.")
_FINISHED_ONLY = flags.DEFINE_bool('finished_only', False, 'Train nothing: summarise and plot the '
                                   'runs already finished under --out.')


def run_overrides(spec, parametrization: str, width: int, learning_rate: float,
                  steps: int) -> list[str]:
  overrides = list(spec.overrides) + [
      f'model.d_model={width}', f'model.mlp_dim={spec.mlp_ratio * width}',
      f'model.parametrization={parametrization}', f'optimizer.learning_rate={learning_rate!r}']
  if parametrization == 'mup':
    overrides.append(f'model.mup_base_width={spec.mup_base_width}')
  if steps:
    overrides += [f'num_train_steps={steps}', f'optimizer.warmup_steps={max(1, steps // 10)}',
                  f'eval_every_steps={steps}', f'checkpoint_every_steps={steps}',
                  f'log_every_steps={min(50, steps)}']
  return overrides


def train_one(spec, workdir: pathlib.Path, overrides: list[str]) -> dict | None:
  """The run's final eval loss (inf if it diverged), reusing a finished workdir; None for an
  unfinished one under --finished_only."""
  from jaxscale.train import loop  # noqa: PLC0415  (after absl has parsed the flags)
  from jaxscale.scaling.sweeps import run_config  # noqa: PLC0415
  summary_path = workdir / 'summary.json'
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    if summary.get('finished'):
      return {'loss': summary['eval_loss'], 'wall_s': None, 'reused': True}
  if _FINISHED_ONLY.value:
    return None
  config = run_config.apply_overrides(run_config.load_config_file(ROOT / spec.base_config),
                                      overrides)
  start = time.perf_counter()
  try:
    loss = loop.run(config, str(workdir))['eval_loss']
  except FloatingPointError:
    loss = math.inf
  return {'loss': loss, 'wall_s': round(time.perf_counter() - start, 1), 'reused': False}


def main(argv):
  del argv
  from jaxscale.hparams import lr_transfer  # noqa: PLC0415
  from jaxscale.scaling.sweeps import run_config  # noqa: PLC0415
  spec = run_config.load_config_file(_SPEC.value)
  widths = [int(w) for w in _WIDTHS.value] or list(spec.widths)
  learning_rates = [float(lr) for lr in _LEARNING_RATES.value] or list(spec.learning_rates)
  parametrizations = _PARAMETRIZATIONS.value or list(spec.parametrizations)
  out = pathlib.Path(_OUT.value).resolve()
  rows, start = [], time.perf_counter()
  for parametrization in parametrizations:
    for width in widths:
      for learning_rate in learning_rates:
        name = f'{parametrization}_w{width}_lr{learning_rate:.3g}'
        result = train_one(spec, out / name, run_overrides(
            spec, parametrization, width, learning_rate, _STEPS.value))
        if result is None:
          continue
        row = {'parametrization': parametrization, 'width': width,
               'learning_rate': learning_rate, **result}
        rows.append(row)
        print(json.dumps(row), flush=True)
  summary = lr_transfer.transfer_summary(rows)
  png = _PNG.value or str(out / 'lr_transfer.png')
  lr_transfer.plot(rows, summary, png)
  for parametrization, numbers in summary.items():
    print(json.dumps({'summary': parametrization, **numbers}), flush=True)
  print(json.dumps({'png': png, 'runs': len(rows),
                    'wall_s': round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == '__main__':
  app.run(main)
