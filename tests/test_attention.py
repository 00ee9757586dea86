"""The attention implementations agree: 'einsum' (the default) with jax.nn.dot_product_attention's
XLA path, and the arguments the cuDNN path builds with the masks they stand for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.models import attention

B, L, H, K = 2, 12, 3, 8


def _qkv(dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (B, L, H, K), jnp.float32).astype(dtype) for key in keys)


def _right_padded_mask():
  lengths = np.array([L, 7])
  return jnp.asarray(np.arange(L)[None, :] < lengths[:, None])


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('masked', [False, True])
def test_einsum_equals_xla_in_fp32_values_and_gradients(causal, masked):
  q, k, v = _qkv()
  key_mask = _right_padded_mask() if masked else None

  def loss(impl, q, k, v):
    out = attention.attend(q, k, v, impl=impl, scale=0.3, causal=causal, key_mask_BxS=key_mask)
    return jnp.sum(jnp.sin(out)), out

  (_, einsum_out), einsum_grads = jax.value_and_grad(
      lambda *a: loss('einsum', *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, xla_out), xla_grads = jax.value_and_grad(
      lambda *a: loss('xla', *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  np.testing.assert_allclose(einsum_out, xla_out, rtol=1e-5, atol=1e-5)
  for got, want in zip(einsum_grads, xla_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_masks_change_the_result():
  """Each mask is applied: without it the output differs (so the equality above means something)."""
  q, k, v = _qkv()
  plain = attention.attend(q, k, v, impl='einsum')
  causal = attention.attend(q, k, v, impl='einsum', causal=True)
  padded = attention.attend(q, k, v, impl='einsum', key_mask_BxS=_right_padded_mask())
  assert not np.allclose(plain, causal, atol=1e-3)
  np.testing.assert_allclose(plain[0], padded[0], rtol=1e-6)  # Row 0 has no padding.
  assert not np.allclose(plain[1], padded[1], atol=1e-3)
  # The first query of a causal model sees only itself: its output is its own value.
  np.testing.assert_allclose(causal[:, 0], v[:, 0], rtol=1e-6)


def test_per_query_mask_equals_xla():
  q, k, v = _qkv(seed=1)
  mask = jax.random.bernoulli(jax.random.key(2), 0.6, (B, L, L)) | jnp.eye(L, dtype=bool)
  key_mask = _right_padded_mask() | (jnp.arange(L) == 0)
  got = attention.attend(q, k, v, impl='einsum', mask_BxQxS=mask, key_mask_BxS=key_mask)
  want = attention.attend(q, k, v, impl='xla', mask_BxQxS=mask, key_mask_BxS=key_mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_einsum_is_close_to_fp32_attention():
  q, k, v = _qkv()
  want = attention.attend(q, k, v, impl='xla', causal=True)
  got = attention.attend(*(t.astype(jnp.bfloat16) for t in (q, k, v)), impl='einsum',
                         causal=True)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.06)


def test_cudnn_path_passes_padding_as_sequence_lengths(monkeypatch):
  """cuDNN runs only on NVIDIA GPUs; on CPU the call it makes is replayed with the XLA kernel,
  which takes the same key_value_seq_lengths, and must equal the masked attention."""
  calls = []
  real = jax.nn.dot_product_attention

  def replay_on_xla(*args, implementation, **kwargs):
    calls.append((implementation, sorted(kwargs)))
    return real(*args, implementation='xla', **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', replay_on_xla)
  q, k, v = _qkv()
  mask = _right_padded_mask()
  got = attention.attend(q, k, v, impl='cudnn', causal=True, key_mask_BxS=mask)
  assert calls == [('cudnn', ['is_causal', 'key_value_seq_lengths', 'scale'])]
  want = attention.attend(q, k, v, impl='einsum', causal=True, key_mask_BxS=mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='per-query mask'):
    attention.attend(q, k, v, impl='cudnn', mask_BxQxS=jnp.ones((B, L, L), bool))


@pytest.mark.parametrize('impl', ['einsum', 'xla'])
def test_grouped_query_attention_equals_repeating_each_kv_head(impl):
  # 6 query heads over 2 kv heads: query head h reads kv head h // 3, as Llama's repeat_kv.
  keys = jax.random.split(jax.random.key(1), 3)
  q = jax.random.normal(keys[0], (B, L, 6, K))
  k, v = (jax.random.normal(key, (B, L, 2, K)) for key in keys[1:])
  mask = _right_padded_mask()

  def loss(k_heads, v_heads):
    out = attention.attend(q, k_heads, v_heads, impl=impl, causal=True, key_mask_BxS=mask)
    return jnp.sum(jnp.sin(out)), out

  (_, grouped), grouped_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(k, v)
  repeat = lambda x: jnp.repeat(x, 3, axis=2)
  (_, repeated), repeated_grads = jax.value_and_grad(
      lambda k, v: loss(repeat(k), repeat(v)), argnums=(0, 1), has_aux=True)(k, v)
  assert grouped.shape == (B, L, 6, K)
  np.testing.assert_allclose(grouped, repeated, rtol=1e-5, atol=1e-5)
  for got, want in zip(grouped_grads, repeated_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Another pairing of query and kv heads gives another result.
  swapped = attention.attend(q, k[:, :, ::-1], v[:, :, ::-1], impl=impl, causal=True,
                             key_mask_BxS=mask)
  assert np.abs(np.asarray(swapped - grouped)).max() > 1e-2
