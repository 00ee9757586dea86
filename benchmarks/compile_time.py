"""Compile time of the train step against depth, with and without `scan_layers`.

  python benchmarks/compile_time.py --config configs/bench_small.py --layers 4,8,16,32

Each point compiles in a fresh process (`benchmarks/train_throughput.py` with one timed step and
no persistent compilation cache), so no point reuses another's compiled code. Prints one JSON line
per point and a last line with, per stack kind, each depth's compile time over the shallowest's.
"""

import json
import os

from absl import app, flags

import throughput_row

_CONFIG = flags.DEFINE_string('config', 'configs/bench_small.py', 'Experiment config file.')
_LAYERS = flags.DEFINE_list('layers', ['4', '8', '16', '32'], 'Depths to compile.')

def compile_seconds(num_layers: int, scan_layers: bool) -> float:
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  row = throughput_row.run(
      [f'--config={_CONFIG.value}', f'--config.model.num_layers={num_layers}',
       f'--config.model.scan_layers={scan_layers}', '--steps=1', '--warmup=0'], env=env)
  return row['compile_s']


def main(argv):
  del argv
  ratios = {}
  for scan_layers in (True, False):
    times = {}
    for layers in map(int, _LAYERS.value):
      times[layers] = compile_seconds(layers, scan_layers)
      print(json.dumps({'num_layers': layers, 'scan_layers': scan_layers,
                        'compile_s': times[layers]}), flush=True)
    shallowest = min(times)
    ratios['scan' if scan_layers else 'unscanned'] = {
        layers: round(seconds / times[shallowest], 2) for layers, seconds in times.items()}
  print(json.dumps({'compile_time_over_shallowest': ratios}))


if __name__ == '__main__':
  app.run(main)
