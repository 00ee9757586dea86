"""Train-step throughput of a config, as one JSON line.

  python benchmarks/train_throughput.py --config configs/bench_small.py [--config.key=value ...]
  python benchmarks/train_throughput.py --config configs/resnet18_cifar10.py --config.batch_size=32

Times the compiled, sharded train step on synthetic batches of the config's shape (token sequences
for language models; images of `config.dataset.image_size` and one-hot labels for classifiers; the
input pipeline is benchmarked separately), reports the median step time over `--steps` steps after
compilation with tokens/s (LMs) or images/s (`examples_per_sec`, classifiers), and relates the
achieved FLOP/s (exact count from `jaxscale.metrics.flops.accounting`) to the device's peak.
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxscale import objectives
from jaxscale.core import sharding
from jaxscale.metrics import flops
from jaxscale.train import checks

import step_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps after compilation (median is reported).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
flags.mark_flags_as_required(['config'])


def _peak_flops(config) -> tuple[float | None, str]:
  """Whole-job peak at the compute dtype: the per-device spec figure times the number of devices
  (None if unknown)."""
  per_device, source = flops.peak_flops_per_device(flops.compute_dtype(config))
  return per_device and per_device * jax.device_count(), source


def _num_classes(dataset_config) -> int:
  """The dataset's class count from its TFDS metadata (known without the data being prepared)."""
  import tensorflow_datasets as tfds  # Classifiers only: loads TensorFlow.
  import jaxscale.data  # noqa: F401  (registers the embedded builders with TFDS)
  try:
    builder = tfds.builder(dataset_config.name, data_dir=dataset_config.data_dir or None)
    return builder.info.features['label'].num_classes
  except Exception as e:  # Any failure means the same fix: name the class count.
    raise ValueError(f'Cannot read the class count of dataset {dataset_config.name!r} ({e}); '
                     'set --config.model.num_classes.') from e


def _synthetic_batch(config, rng) -> tuple[str, dict[str, np.ndarray]]:
  """(task, batch) of the config's shapes; fills in the sizes a dataset would decide."""
  if 'vocab_size' in config.model:
    if not config.model.vocab_size:
      config.model.vocab_size = 256
    seq_len = config.dataset.seq_len
    tokens = rng.integers(0, config.model.vocab_size, (config.batch_size, seq_len + 1),
                          dtype=np.int32)
    return 'lm', {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
                  'weights': np.ones((config.batch_size, seq_len), np.float32)}
  if not config.model.num_classes:
    config.model.num_classes = _num_classes(config.dataset)
  if not config.model.image_size:
    config.model.image_size = config.dataset.image_size
  size, channels = config.model.image_size, flops.model_kwargs(config).channels
  labels = rng.integers(0, config.model.num_classes, config.batch_size)
  return 'classification', {
      'image': rng.normal(size=(config.batch_size, size, size, channels)).astype(np.float32),
      'labels': np.eye(config.model.num_classes, dtype=np.float32)[labels],
      'weights': np.ones((config.batch_size,), np.float32)}


def main(argv):
  del argv
  config = _CONFIG.value
  checks.validate(config, num_devices=jax.device_count())
  task, host_batch = _synthetic_batch(config, np.random.default_rng(0))
  mesh, state, _, batch_sharding, train_step = step_setup.sharded_train_step(
      config, objective=objectives.make(task, config), constrain_activations=True)
  batch = sharding.global_batch(host_batch, batch_sharding)

  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  step_times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    step_times.append(time.perf_counter() - start)

  step_s = statistics.median(step_times)
  size = flops.accounting(config)
  flops_per_step = config.batch_size * size.train_flops_per_example
  peak, peak_source = _peak_flops(config)
  row = {
      'device': jax.devices()[0].device_kind, 'num_devices': jax.device_count(),
      'mesh': dict(mesh.shape), 'params_total': size.params_total,
      'params_non_embedding': size.params_non_embedding, 'batch_size': config.batch_size}
  if task == 'lm':
    row['seq_len'] = config.dataset.seq_len
  else:
    row.update(model=config.model.name, image_size=config.model.image_size,
               num_classes=config.model.num_classes)
  row.update({
      'dtype': config.model.get('dtype', 'float32'),  # Models without the key compute in fp32.
      'compile_s': round(compile_s, 3),
      'step_s_median': step_s, 'step_s_min': min(step_times), 'steps_per_s': 1 / step_s})
  if task == 'lm':
    row['tokens_per_s'] = config.batch_size * size.tokens_per_example / step_s
  else:
    row['examples_per_sec'] = config.batch_size / step_s
  row.update({
      'flops_per_step': flops_per_step, 'flops_per_s': flops_per_step / step_s,
      'peak_flops_per_s': peak, 'peak_source': peak_source,
      'fraction_of_peak': flops_per_step / step_s / peak if peak else None,
      'final_loss': float(metrics['train_loss']),
  })
  print(json.dumps(row))


if __name__ == '__main__':
  app.run(main)
