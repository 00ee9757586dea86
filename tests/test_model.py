"""Transformer behaviour: causality, scan = loop, remat = no remat, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxscale.models import build
from tests.helpers import tiny_config


def _model(**overrides):
  return build.build_model(tiny_config(**{f'model.{k}': v for k, v in overrides.items()}).model, 0)


def test_logits_do_not_depend_on_future_tokens():
  model = _model()
  tokens = np.random.default_rng(0).integers(0, 64, (2, 16))
  changed = tokens.copy()
  changed[:, 10:] = (changed[:, 10:] + 1) % 64
  a, b = model(jnp.asarray(tokens)), model(jnp.asarray(changed))
  np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)
  assert not np.allclose(a[:, 10:], b[:, 10:])


def test_scanned_layers_compute_the_same_function_as_the_loop():
  loop_model, scan_model = _model(), _model(scan_layers=True)
  # Copy the loop's per-layer parameters into the scan model's stacked layout.
  layer_states = [nnx.state(block) for block in loop_model.blocks]
  nnx.update(scan_model.blocks, jax.tree.map(lambda *xs: jnp.stack(xs), *layer_states))
  scan_model.embed_VxD[...] = loop_model.embed_VxD[...]
  nnx.update(scan_model.final_norm, nnx.state(loop_model.final_norm))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 16)))
  np.testing.assert_allclose(loop_model(tokens), scan_model(tokens), atol=1e-5)


@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.parametrize('policy', ['full', 'dots_saveable'])
def test_rematerialisation_keeps_gradients(scan_layers, policy):
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 16)))

  def grads(model):
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)
    return jax.jit(jax.grad(loss))(params)

  plain = grads(_model(scan_layers=scan_layers))
  remat = grads(_model(scan_layers=scan_layers, remat_policy=policy))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_fp32_params_and_logits():
  model = _model(dtype='bfloat16', tie_embeddings=False, mlp_activation='swiglu')
  params = nnx.state(model, nnx.Param)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  logits = model(jnp.zeros((2, 16), jnp.int32))
  assert logits.dtype == jnp.float32
  fp32 = _model(tie_embeddings=False, mlp_activation='swiglu')(jnp.zeros((2, 16), jnp.int32))
  np.testing.assert_allclose(logits, fp32, atol=0.1)  # Same function, bf16 rounding only.
