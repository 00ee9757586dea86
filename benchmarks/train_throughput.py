"""Train-step throughput of a config, as one JSON line.

  python benchmarks/train_throughput.py --config configs/bench_small.py [--config.key=value ...]

Times the compiled, sharded train step on synthetic token batches of the config's shape (the input
pipeline is benchmarked separately), reports the median step time over `--steps` steps after
compilation, and relates the achieved FLOP/s (exact count from jaxscale.flops) to the device's
matmul peak measured in the same process.
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxscale import config_validation, flops, optim, sharding, steps, train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps after compilation (median is reported).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
flags.mark_flags_as_required(['config'])


def _peak_flops() -> tuple[float, str]:
  """Whole-host peak: the per-device figure times the number of devices."""
  per_device, source = flops.peak_flops_per_device()
  if source.startswith('measured'):
    # Measured on the device itself; fp32 matmul peak for CPU (all cores), bf16 elsewhere.
    return per_device * jax.local_device_count(), source
  return per_device * jax.device_count(), source


def main(argv):
  del argv
  config = _CONFIG.value
  config_validation.validate(config, num_devices=jax.device_count())
  if not config.model.vocab_size:
    config.model.vocab_size = 256
  mesh = sharding.make_mesh(config.mesh)
  optimizer, lr_fn = optim.make_optimizer(config.optimizer, config.num_train_steps)
  graphdef, state, state_shardings = train.create_train_state(config, mesh, optimizer)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  train_step, _ = steps.compile_steps(graphdef, optimizer, lr_fn, state_shardings, batch_sharding,
                                      sharding.replicated(mesh), config.optimizer.grad_accum_steps)
  seq_len, vocab = config.dataset.seq_len, config.model.vocab_size
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (config.batch_size, seq_len + 1), dtype=np.int32)
  batch = sharding.global_batch(
      {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
       'weights': np.ones((config.batch_size, seq_len), np.float32)}, batch_sharding)

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
  tokens_per_step = config.batch_size * seq_len
  flops_per_step = tokens_per_step * flops.train_flops_per_token(config.model, seq_len, vocab)
  peak, peak_source = _peak_flops()
  params_total, params_non_embedding = flops.count_params(config.model, vocab)
  print(json.dumps({
      'device': jax.devices()[0].device_kind, 'num_devices': jax.device_count(),
      'mesh': dict(mesh.shape), 'params_total': params_total,
      'params_non_embedding': params_non_embedding,
      'batch_size': config.batch_size, 'seq_len': seq_len, 'dtype': config.model.dtype,
      'compile_s': round(compile_s, 3), 'step_s_median': step_s,
      'step_s_min': min(step_times), 'steps_per_s': 1 / step_s,
      'tokens_per_s': tokens_per_step / step_s, 'flops_per_step': flops_per_step,
      'flops_per_s': flops_per_step / step_s, 'peak_flops_per_s': peak,
      'peak_source': peak_source, 'fraction_of_peak': flops_per_step / step_s / peak,
      'final_loss': float(metrics['train_loss']),
  }))


if __name__ == '__main__':
  app.run(main)
