"""Frozen parameters with a weight-decay mask (AdamW): the mask sees the frozen partition too."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxscale.config import config_base
from jaxscale.core import param_paths
from jaxscale.models import build
from jaxscale.train import optim


def test_adamw_with_a_frozen_backbone_updates_only_the_head():
  model_config = ml_collections.ConfigDict(dict(
      name='vit', num_classes=3, image_size=8, patch_size=4, width=16, depth=1, num_heads=2,
      mlp_dim=32))
  params = nnx.state(build.build_model(model_config, seed=0), nnx.Param)
  opt_config = config_base.get_base_config().optimizer
  opt_config.frozen = ('^(?!head)',)
  opt_config.warmup_steps = 0
  optimizer, _ = optim.make_optimizer(opt_config, num_train_steps=10)
  opt_state = optimizer.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = optimizer.update(grads, opt_state, params)
  params_after = optax.apply_updates(params, updates)
  before, after = param_paths.named_leaves(params), param_paths.named_leaves(params_after)
  for name in before:
    changed = not np.array_equal(np.asarray(before[name][...]), np.asarray(after[name][...]))
    assert changed == name.startswith('head'), name
