"""`python -m jaxscale.hparams multi --config C --workdirs a,b,c --values learning_rate=1e-3,3e-3,1e-2`

Trains K models of one config that differ only in learning rate, weight decay, seed or init
scale (`model.init_scale`), in one compiled program (`multi.py`); model k writes into the k-th
workdir as its solo run would.
`--values` repeats (`--values seed=0,1,2`), one value per model each; trailing
`--config.key=value` arguments override the config as on the trainer's command line. Prints each
model's summary as JSON.
"""

import argparse
import json
import sys

from jaxscale.scaling.sweeps import run_config


def parse_values(assignments: list[str]) -> dict[str, list[float]]:
  """['learning_rate=1e-3,3e-3'] -> {'learning_rate': [0.001, 0.003]}."""
  values = {}
  for assignment in assignments:
    name, sep, text = assignment.partition('=')
    try:
      values[name] = [float(v) for v in text.split(',')]
    except ValueError:
      sep = ''
    if not sep:
      raise ValueError(f'--values expects NAME=V1,V2,... (e.g. learning_rate=1e-3,3e-3); got '
                       f'{assignment!r}.')
  return values


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxscale.hparams multi', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='Run config file, as for jaxscale.main.')
  parser.add_argument('--workdirs', required=True, help='Comma-separated, one per model.')
  parser.add_argument('--values', action='append', required=True, metavar='NAME=V1,V2,...',
                      help='Per-model values of learning_rate, weight_decay, seed or '
                      'init_scale.')
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith('--config.') or '=' not in a]
  if bad:
    parser.error(f'unrecognised arguments {bad}; overrides look like --config.key=value')
  try:
    config = run_config.apply_overrides(run_config.load_config_file(args.config),
                                        [a[len('--config.'):] for a in rest])
    # JAX and TensorFlow load here, after the arguments are known good.
    from jaxscale.hparams import multi_loop  # noqa: PLC0415
    summaries = multi_loop.run(config, args.workdirs.split(','), parse_values(args.values))
  except (ValueError, KeyError, FileNotFoundError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(json.dumps(summaries, indent=1, default=float))
  return 0
