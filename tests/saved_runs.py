"""Workdirs holding one checkpoint of a tiny model of each registered family, written straight
from a fresh train state (no data pipeline): what export and serving read."""

import jax
import ml_collections
import tensorflow as tf

from jaxscale.checkpoint import checkpointing
from jaxscale.config import workdir as workdir_lib
from jaxscale.core import sharding
from jaxscale.train import experiment, optim
from tests.helpers import tiny_config

_IMAGE = {'num_classes': 3, 'image_size': 8, 'channels': 1}
FAMILY_MODELS = {
    'transformer': {'name': 'transformer', 'vocab_size': 64, 'num_layers': 2, 'd_model': 32,
                    'num_heads': 4, 'mlp_dim': 64},
    'encoder': {'name': 'encoder', 'vocab_size': 259, 'num_layers': 1, 'd_model': 32,
                'num_heads': 4, 'mlp_dim': 64, 'num_classes': 3},
    'vit': {'name': 'vit', **_IMAGE, 'patch_size': 4, 'width': 16, 'depth': 1, 'num_heads': 2,
            'mlp_dim': 32},
    'resnet': {'name': 'resnet', **_IMAGE, 'depth': 18, 'width': 4, 'stem': 'cifar'},
    'mlp': {'name': 'mlp', **_IMAGE, 'hidden_dims': (16,)},
}


def family_config(family: str, **overrides):
  config = tiny_config(**overrides)
  config.model = ml_collections.ConfigDict(FAMILY_MODELS[family])
  if 'image_size' in config.model:
    config.dataset.image_size = config.model.image_size
  return config


def save_run(workdir, config, perturb: float = 0.01):
  """Records `config` and saves step 1 of its train state, its parameters moved off their init
  (so reading them back is a real test)."""
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
  _, state, _ = experiment.create_train_state(config, mesh, optimizer)
  noise = lambda p: p + perturb * jax.random.normal(jax.random.key(1), p.shape, p.dtype)
  state = state.replace(params=jax.tree.map(noise, state.params))
  workdir_lib.record_config(workdir, config)
  manager = checkpointing.make_manager(workdir, config)
  checkpointing.save(manager, 1, state, iter(tf.data.Dataset.range(3)), force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir
