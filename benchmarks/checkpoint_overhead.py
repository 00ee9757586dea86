"""What checkpointing costs the training loop: async saves vs blocking saves vs none, and what
the checksum manifests add on save and on restore, as JSON.

  python benchmarks/checkpoint_overhead.py --config configs/default.py --every 5 --steps 40

Runs the compiled, sharded train step in the loop's pattern (dispatch steps without waiting,
save through the real checkpoint manager, state and tf.data iterator items, every `--every`
steps, wait for the last save at the end) once per mode, in the same process on the same
state, and reports the mean wall time per step of each mode and its ratio to no checkpoints.
`async_manifest` saves as the trainer does (checkpointing.Saver: the manifest is hashed in a
background thread once Orbax has finalized the step). Modes alternate over `--repeats` rounds
so drifting machine load hits them alike. Restores compare a plain restore of the newest step
with `restore_latest`, which first verifies the step against its manifest.
"""

import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import tensorflow as tf
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from jaxscale.checkpoint import checkpointing
from jaxscale.core import sharding
from jaxscale.train import checks

import step_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 40, 'Timed steps per mode and round.')
_EVERY = flags.DEFINE_integer('every', 5, 'Checkpoint interval in steps.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Rounds over the three modes.')
flags.mark_flags_as_required(['config'])

MODES = ('none', 'blocking', 'async', 'async_manifest')


def _mean_step_seconds(compiled, state, batch, mode: str, directory: epath.Path, config):
  manager = saver = None
  if mode != 'none':
    config.async_checkpointing = mode != 'blocking'
    manager = checkpointing.make_manager(directory, config)
    saver = checkpointing.Saver(manager) if mode == 'async_manifest' else None
  iterator = iter(tf.data.Dataset.range(10**9).shuffle(1024, seed=0))
  start = time.perf_counter()
  for step in range(1, _STEPS.value + 1):
    state, _ = compiled(state, batch)
    next(iterator)
    if saver is not None:
      saver.check(step)
    if manager is not None and step % _EVERY.value == 0:
      if saver is not None:
        saver.save(step, state, iterator)
      else:
        checkpointing.save(manager, step, state, iterator, force=True)
  jax.block_until_ready(state)
  if saver is not None:
    saver.check(_STEPS.value, wait=True)
  if manager is not None:
    manager.wait_until_finished()
    manager.close()
  return (time.perf_counter() - start) / _STEPS.value, state


def _restore_seconds(directory: epath.Path, config, state, shardings) -> dict[str, float]:
  """Best-of-3 seconds of a plain restore of the newest step and of a verified restore_latest."""
  manager = checkpointing.make_manager(directory, config)
  step = manager.latest_step()
  abstract = sharding.abstract_arrays(state, shardings)
  make_iterator = lambda: iter(tf.data.Dataset.range(10**9).shuffle(1024, seed=0))
  timings = {'plain': [], 'verified': []}
  for _ in range(3):
    for name, restore in (
        ('plain', lambda: checkpointing.restore(manager, step, abstract, make_iterator())),
        ('verified', lambda: checkpointing.restore_latest(manager, abstract, make_iterator()))):
      start = time.perf_counter()
      jax.block_until_ready(restore())
      timings[name].append(time.perf_counter() - start)
  manager.close()
  return {name: min(t) for name, t in timings.items()}


def main(argv):
  del argv
  config = _CONFIG.value
  checks.validate(config, num_devices=jax.device_count())
  if not config.model.vocab_size:
    config.model.vocab_size = 256
  config.keep_checkpoints = 2
  _, state, state_shardings, batch_sharding, train_step = step_setup.sharded_train_step(config)
  seq_len, vocab = config.dataset.seq_len, config.model.vocab_size
  tokens = np.random.default_rng(0).integers(0, vocab, (config.batch_size, seq_len + 1), np.int32)
  batch = sharding.global_batch(
      {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
       'weights': np.ones((config.batch_size, seq_len), np.float32)}, batch_sharding)
  compiled = train_step.lower(state, batch).compile()
  state, _ = compiled(state, batch)  # Warm up.

  times = {mode: [] for mode in MODES}
  with tempfile.TemporaryDirectory() as tmp:
    for round_index in range(_REPEATS.value):
      for mode in MODES:
        directory = epath.Path(tmp) / f'{mode}_{round_index}'
        seconds, state = _mean_step_seconds(compiled, state, batch, mode, directory, config)
        times[mode].append(seconds)
    last = epath.Path(tmp) / 'async_0' / 'checkpoints' / str(_STEPS.value)
    checkpoint_bytes = sum(os.path.getsize(os.path.join(root, name))
                           for root, _, names in os.walk(last) for name in names)
    restore_s = _restore_seconds(epath.Path(tmp) / 'async_manifest_0', config, state,
                                 state_shardings)
  means = {mode: statistics.mean(t) for mode, t in times.items()}
  print(json.dumps({
      'device': jax.devices()[0].device_kind, 'num_devices': jax.device_count(),
      'batch_size': config.batch_size, 'seq_len': seq_len,
      'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'checkpoint_every_steps': _EVERY.value, 'steps_per_mode': _STEPS.value,
      'repeats': _REPEATS.value, 'approx_checkpoint_bytes': checkpoint_bytes,
      'mean_step_s': {m: round(v, 5) for m, v in means.items()},
      'per_round_step_s': {m: [round(v, 5) for v in t] for m, t in times.items()},
      'ratio_to_none': {m: round(v / means['none'], 3) for m, v in means.items()},
      'manifest_save_ratio': round(means['async_manifest'] / means['async'], 3),
      'restore_s': {k: round(v, 4) for k, v in restore_s.items()},
      'manifest_restore_ratio': round(restore_s['verified'] / restore_s['plain'], 3),
  }))


if __name__ == '__main__':
  app.run(main)
