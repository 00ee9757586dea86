"""Learning-rate schedules and the weight-decay mask."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from jaxscale.models import build
from jaxscale.train import optim
from tests.helpers import tiny_config


def _schedule(**overrides):
  config = tiny_config(**{f'optimizer.{k}': v for k, v in overrides.items()})
  return optim.learning_rate_schedule(config.optimizer, num_train_steps=1000)


def test_warmup_then_cosine_ends_at_the_minimum_ratio():
  lr = _schedule(schedule='cosine', learning_rate=1.0, warmup_steps=100, min_lr_ratio=0.1)
  assert float(lr(0)) == 0.0
  assert float(lr(50)) == pytest.approx(0.5)
  assert float(lr(100)) == pytest.approx(1.0)
  assert float(lr(1000)) == pytest.approx(0.1, abs=1e-6)


def test_wsd_holds_the_peak_then_decays_in_the_last_fraction():
  lr = _schedule(schedule='wsd', learning_rate=1.0, warmup_steps=100, decay_fraction=0.2,
                 min_lr_ratio=0.0)
  assert [float(lr(s)) for s in (100, 500, 800)] == pytest.approx([1.0, 1.0, 1.0])
  assert float(lr(900)) == pytest.approx(0.5)
  assert float(lr(1000)) == pytest.approx(0.0, abs=1e-6)


def test_constant_schedule_after_warmup():
  lr = _schedule(schedule='constant', learning_rate=0.3, warmup_steps=10)
  assert float(lr(10)) == pytest.approx(0.3) and float(lr(999)) == pytest.approx(0.3)


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_weight_decay_skips_norms_and_every_optimizer_descends(name):
  config = tiny_config(**{'optimizer.name': name, 'optimizer.weight_decay': 0.5,
                          'optimizer.learning_rate': 0.1, 'optimizer.warmup_steps': 0})
  params = nnx.state(build.build_model(config.model, 0), nnx.Param)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
  norm_update = updates['final_norm']['scale'][...]
  matrix_update = updates['embed_VxD'][...]
  if name != 'adafactor':  # Adafactor has no decoupled decay of zero-gradient params to test.
    assert np.all(norm_update == 0)       # Norm scales are never decayed...
    assert np.any(matrix_update != 0)     # ...matrices are.
  loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))
  updates, _ = optimizer.update(jax.grad(loss)(params), optimizer.init(params), params)
  assert loss(optax.apply_updates(params, updates)) < loss(params)


def test_decay_mask_sees_through_stacked_layers_and_skips_biases_and_positions():
  model_config = ml_collections.ConfigDict(dict(
      name='vit', num_classes=10, image_size=16, patch_size=8, width=16, depth=2, num_heads=2,
      mlp_dim=32, scan_layers=True))
  params = nnx.state(build.build_model(model_config, 0), nnx.Param)
  mask = optim._decay_mask(params)
  decayed = {jax.tree_util.keystr(path): bool(v)
             for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  for name, expected in [("['blocks']['attn_norm']['scale']", False),   # [layers, D]
                         ("['blocks']['qkv_bias_TxHxK']", False),       # [layers, 3, H, K]
                         ("['pos_LxD']", False),
                         ("['blocks']['qkv_DxTxHxK']", True),
                         ("['blocks']['mlp_in_DxF']", True),
                         ("['head_DxK']", True)]:
    assert decayed[name + '.value'] is expected, name
