"""The bidirectional encoder and the transformers' padding masks, pooling and classifier head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxscale.config import validation

from jaxscale.train import checks
from jaxscale.metrics import flops
from jaxscale.models import transformer
from jaxscale.models import build
from tests.helpers import tiny_config

SEQ_LEN, REAL = 16, 10  # The padded row of a batch holds REAL real tokens, then padding.


def _config(name='encoder', **overrides):
  return tiny_config(**{'model.name': name, **{f'model.{k}': v for k, v in overrides.items()}})


def _model(name='encoder', **overrides):
  model = build.build_model(_config(name, **overrides).model, 0)
  if model.num_classes:
    # The head starts at zero (every logit equal), which would hide any difference downstream.
    keys = jax.random.split(jax.random.key(7))
    model.head_DxK[...] = jax.random.normal(keys[0], model.head_DxK.shape)
    model.head_bias_K[...] = jax.random.normal(keys[1], model.head_bias_K.shape)
  return model


def _tokens(seed=0, batch=2):
  return np.random.default_rng(seed).integers(0, 64, (batch, SEQ_LEN)).astype(np.int32)


def _mask():
  """Row 0 is padded after REAL tokens; row 1 is all real."""
  mask = np.ones((2, SEQ_LEN), np.int32)
  mask[0, REAL:] = 0
  return mask


@pytest.mark.parametrize('name, bidirectional', [('encoder', True), ('transformer', False)])
def test_only_the_encoder_sees_later_tokens(name, bidirectional):
  model = _model(name)
  tokens = _tokens()
  changed = tokens.copy()
  changed[:, 10:] = (changed[:, 10:] + 1) % 64
  a, b = model(jnp.asarray(tokens)), model(jnp.asarray(changed))
  assert a.shape == (2, SEQ_LEN, 64)
  assert not np.allclose(a[:, 10:], b[:, 10:])
  if bidirectional:
    assert not np.allclose(a[:, :10], b[:, :10], atol=1e-4)
  else:
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)


@pytest.mark.parametrize('name', ['encoder', 'transformer'])
def test_padded_tokens_change_no_real_position(name):
  model = _model(name)
  tokens, mask = _tokens(), _mask()
  changed = tokens.copy()
  changed[0, REAL:] = (changed[0, REAL:] + 1) % 64
  a = model(jnp.asarray(tokens), jnp.asarray(mask))
  b = model(jnp.asarray(changed), jnp.asarray(mask))
  np.testing.assert_allclose(a[0, :REAL], b[0, :REAL], atol=1e-5)
  np.testing.assert_allclose(a[1], b[1], atol=1e-5)
  # The same real tokens without any padding: RoPE positions are unchanged by right padding.
  unpadded = model(jnp.asarray(tokens[:1, :REAL]))
  np.testing.assert_allclose(a[0, :REAL], unpadded[0], atol=1e-5)


@pytest.mark.parametrize('name', ['encoder', 'transformer'])
@pytest.mark.parametrize('pooling', ['cls', 'mean', 'last'])
def test_pooled_logits_ignore_padding(name, pooling):
  model = _model(name, num_classes=3, pooling=pooling)
  tokens, mask = _tokens(), _mask()
  changed = tokens.copy()
  changed[0, REAL:] = (changed[0, REAL:] + 1) % 64
  a = model(jnp.asarray(tokens), jnp.asarray(mask))
  b = model(jnp.asarray(changed), jnp.asarray(mask))
  assert a.shape == (2, 3) and a.dtype == jnp.float32
  np.testing.assert_allclose(a, b, atol=1e-5)
  # Padding appended to a sequence leaves its class logits as they were.
  unpadded = model(jnp.asarray(tokens[:1, :REAL]))
  np.testing.assert_allclose(a[:1], unpadded, atol=1e-5)
  if name == 'encoder' or pooling != 'cls':  # A decoder's position 0 never sees the padding.
    # Without the mask the padding is read as tokens, so the checks above have teeth.
    assert not np.allclose(model(jnp.asarray(tokens))[0], a[0], atol=1e-4)


def test_pooling_reads_the_right_positions():
  x_BxLxD = jax.random.normal(jax.random.key(0), (3, 6, 4))
  # Right padding, padding on both sides, and no real token at all.
  mask_BxL = jnp.array([[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], bool)
  x = np.asarray(x_BxLxD)
  np.testing.assert_allclose(transformer._pool(x_BxLxD, mask_BxL, 'cls'), x[:, 0])
  last = transformer._pool(x_BxLxD, mask_BxL, 'last')
  np.testing.assert_allclose(last[:2], np.stack([x[0, 2], x[1, 4]]))
  mean = transformer._pool(x_BxLxD, mask_BxL, 'mean')
  np.testing.assert_allclose(mean[0], x[0, :3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(mean[1], x[1, [1, 3, 4]].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(mean[2], 0.0)  # Finite, not NaN.
  np.testing.assert_allclose(transformer._pool(x_BxLxD, None, 'mean'), x.mean(1), rtol=1e-6)
  np.testing.assert_allclose(transformer._pool(x_BxLxD, None, 'last'), x[:, -1])


def test_default_pooling_follows_the_attention():
  assert _model('encoder', num_classes=2).pooling == 'cls'
  assert _model('transformer', num_classes=2).pooling == 'last'
  with pytest.raises(ValueError, match='pooling'):
    _model('encoder', num_classes=2, pooling='max')


def _copy_into_scanned(loop_model, scan_model):
  """The loop's per-layer parameters, stacked into the scan model's layout; the rest as is."""
  layer_states = [nnx.state(block) for block in loop_model.blocks]
  nnx.update(scan_model.blocks, jax.tree.map(lambda *xs: jnp.stack(xs), *layer_states))
  scan_model.embed_VxD[...] = loop_model.embed_VxD[...]
  scan_model.head_DxK[...] = loop_model.head_DxK[...]
  scan_model.head_bias_K[...] = loop_model.head_bias_K[...]
  nnx.update(scan_model.final_norm, nnx.state(loop_model.final_norm))


@pytest.mark.parametrize('remat_policy', ['none', 'full'])
def test_scanned_layers_with_a_mask_match_the_loop(remat_policy):
  kwargs = dict(num_classes=3, pooling='mean')
  loop_model = _model(**kwargs)
  scan_model = _model(scan_layers=True, remat_policy=remat_policy, **kwargs)
  _copy_into_scanned(loop_model, scan_model)
  tokens, mask = jnp.asarray(_tokens(1)), jnp.asarray(_mask())

  def loss_and_grads(model):
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens, mask) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  np.testing.assert_allclose(loop_model(tokens, mask), scan_model(tokens, mask), atol=1e-5)
  (loop_loss, loop_grads), (scan_loss, scan_grads) = map(loss_and_grads, (loop_model, scan_model))
  np.testing.assert_allclose(loop_loss, scan_loss, rtol=1e-5)
  # The scanned gradients are the loop's, stacked on the layer axis.
  per_layer = [jax.tree.leaves(loop_grads['blocks'][i]) for i in range(len(loop_model.blocks))]
  for stacked, *layers in zip(jax.tree.leaves(scan_grads['blocks']), *per_layer):
    np.testing.assert_allclose(stacked, jnp.stack(layers), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loop_grads['embed_VxD'][...], scan_grads['embed_VxD'][...],
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', ['encoder', 'transformer'])
@pytest.mark.parametrize('tied', [True, False])
def test_classifier_parameter_count_matches_the_accounting(name, tied):
  config = _config(name, num_classes=5, tie_embeddings=tied)
  model = build.build_model(config.model, 0)
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  size = flops.accounting(config)
  assert size.params_total == actual
  assert size.params_total - size.params_non_embedding == 64 * 32  # No unembedding, tied or not.
  assert not hasattr(model, 'unembed_DxV')


def test_encoder_validates_with_the_base_keys_and_has_no_causal_switch():
  checks.validate(_config('encoder', num_classes=2, pooling='mean'))
  causal_config = _config('transformer')
  causal_config.model.causal = False  # A decoder may be built bidirectional from code or config.
  checks.validate(causal_config)
  encoder_config = _config('encoder')
  encoder_config.model.causal = True  # The encoder's name fixes its attention.
  with pytest.raises(validation.ConfigError, match="config.model.causal"):
    checks.validate(encoder_config)
  with pytest.raises(validation.ConfigError, match='num_classes'):
    checks.validate(_config('encoder', num_classes=-1))
