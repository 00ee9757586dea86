"""Input-pipeline headroom: batches/s of a config's train pipeline alone over steps/s of its train
step, measured in the same run, as one JSON line.

  python benchmarks/input_pipeline.py --config configs/bench_small.py

The pipeline is timed by itself in this process (`jaxscale.data.get_datasets`, the iterator the
trainer reads, as numpy; the shuffle buffers are filled before timing), the step in a fresh
process by `benchmarks/train_throughput.py` on synthetic batches of the same shape, so neither
competes with the other. A ratio well above 1 means the step, not the input, sets the pace; on an
accelerator the step gets faster while the pipeline stays on the host's CPUs, so keep a margin.
"""

import json
import sys
import time

from absl import app, flags
from ml_collections import config_flags

import throughput_row

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_BATCHES = flags.DEFINE_integer('batches', 300, 'Pipeline batches timed after the first.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Train steps timed (median, after compilation).')
flags.mark_flags_as_required(['config'])

def pipeline_batches_per_s(config) -> dict:
  from jaxscale.data import get_datasets  # noqa: PLC0415  (loads TensorFlow)
  start = time.perf_counter()
  datasets = get_datasets(config.dataset, local_batch_size=config.batch_size, num_eval_batches=1,
                          seed=config.seed)
  batches = datasets.train.as_numpy_iterator()
  next(batches)  # Builds the dataset on first use and fills the shuffle buffers.
  ready = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(batches)
  seconds = time.perf_counter() - ready
  return {'pipeline_ready_s': round(ready - start, 2),
          'pipeline_batches_per_s': _BATCHES.value / seconds}


def step_per_s(config_path: str, overrides: list[str]) -> dict:
  return throughput_row.run([f'--config={config_path}', f'--steps={_STEPS.value}', *overrides])


def main(argv):
  del argv
  config = _CONFIG.value
  overrides = [arg for arg in sys.argv[1:] if arg.startswith('--config.')]
  row = {'config': flags.FLAGS['config'].config_filename, 'dataset': config.dataset.name,
         'batch_size': config.batch_size}
  row.update(pipeline_batches_per_s(config))
  step = step_per_s(row['config'], overrides)
  row['train_steps_per_s'] = step['steps_per_s']
  row['headroom'] = row['pipeline_batches_per_s'] / step['steps_per_s']
  print(json.dumps(row))


if __name__ == '__main__':
  app.run(main)
