"""Small configs and batches shared by the tests."""

import numpy as np

from jaxscale import config_base


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
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
          'weights': np.ones((batch_size, seq_len), np.float32)}
