"""Small configs and batches shared by the tests."""

import importlib.util
import itertools
import pathlib

import numpy as np

from jaxscale.config import config_base

CONFIG_DIR = pathlib.Path(__file__).parent.parent / 'configs'


def tiny_config(**overrides):
  """A 2-layer, d_model 32 LM config that trains in seconds on CPU."""
  c = config_base.get_base_config()
  c.num_train_steps = 20
  c.batch_size = 8
  c.log_every_steps = 5
  c.eval_every_steps = 10
  c.checkpoint_every_steps = 10
  c.num_eval_batches = 2
  c.model.vocab_size = 64
  c.model.num_layers = 2
  c.model.d_model = 32
  c.model.num_heads = 4
  c.model.mlp_dim = 64
  c.dataset.seq_len = 16
  c.optimizer.warmup_steps = 2
  return apply_overrides(c, overrides)


def apply_overrides(config, overrides: dict):
  """Sets each 'a.b.c' key of `overrides` in `config` (like --config.a.b.c=value); returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
          'weights': np.ones((batch_size, seq_len), np.float32)}


def first_batches(dataset, num_batches: int) -> list[dict]:
  """The first batches of a tf.data pipeline, as numpy."""
  return list(itertools.islice(dataset.as_numpy_iterator(), num_batches))


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def load_config_file(name: str, **overrides):
  """`configs/<name>.py`'s get_config(), with dotted-key overrides."""
  spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return apply_overrides(module.get_config(), overrides)


def interrupt_after_saving(monkeypatch, step: int):
  """Makes the next run stop (KeyboardInterrupt, as a preemption would) right after its
  checkpoint of `step` is written; `monkeypatch.undo()` or a new monkeypatch restores saving."""
  from jaxscale.checkpoint import checkpointing  # noqa: PLC0415  (JAX-free import of this module)
  real_save = checkpointing.save

  def save_then_die(manager, saved_step, *args, **kwargs):
    real_save(manager, saved_step, *args, **kwargs)
    if saved_step == step:
      manager.wait_until_finished()
      raise KeyboardInterrupt('simulated preemption')

  monkeypatch.setattr(checkpointing, 'save', save_then_die)
  return real_save
