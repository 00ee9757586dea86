"""KV-cache generation: prefill + decode give the full forward's logits, greedy with the cache is
greedy without it, ragged prompts batch with correct positions, sampling filters, stop tokens,
one compile per shape bucket, and a sharded cache on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxscale.core import sharding
from jaxscale.inference import decoding, sampling
from jaxscale.models import build
from tests.helpers import tiny_config


NEW_TOKENS = 8  # One max length throughout, so the tests share compiled loops.


@pytest.fixture(scope='module', params=[False, True], ids=['loop', 'scan'])
def model(request):
  return build.build_model(tiny_config(**{'model.scan_layers': request.param}).model, seed=0)


@pytest.fixture(scope='module')
def scanned_model():
  return build.build_model(tiny_config(**{'model.scan_layers': True}).model, seed=0)


def _ragged_prompts():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 64, length, dtype=np.int32) for length in (5, 2, 9)]


def test_prefill_and_decode_give_the_full_forwards_logits_for_left_padded_rows(model):
  tokens_BxL = np.random.default_rng(1).integers(0, 64, (2, 10), dtype=np.int32)
  full_BxLxV = np.asarray(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(tokens_BxL)))
  extend = nnx.jit(lambda m, t, c: m.extend(t, c))
  padding = 3
  cache = model.init_cache(2, padding + 12, first_B=jnp.full((2,), padding))
  padded_prompt = np.concatenate([np.zeros((2, padding), np.int32), tokens_BxL[:, :6]], axis=1)
  prefill_BxPxV, cache = extend(model, jnp.asarray(padded_prompt), cache)
  decoded = [prefill_BxPxV[:, padding:]]
  for i in range(6, 10):
    logits_Bx1xV, cache = extend(model, jnp.asarray(tokens_BxL[:, i:i + 1]), cache)
    decoded.append(logits_Bx1xV)
  np.testing.assert_allclose(np.concatenate(decoded, axis=1), full_BxLxV, atol=1e-4)
  assert int(cache.length) == padding + 10


def test_greedy_with_the_cache_equals_greedy_without_it_token_for_token(model):
  prompts = _ragged_prompts()
  cached = sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS, kv_cache=True)
  recomputed = sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS, kv_cache=False)
  np.testing.assert_array_equal(cached, recomputed)
  # Each row is the argmax of the plain forward on its own unpadded tokens (right-padded into
  # one batch: causal, so the padding after a position cannot change it).
  rows = [np.concatenate([p, row]) for p, row in zip(prompts, cached)]
  batch_BxL = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for b, row in enumerate(rows):
    batch_BxL[b, :len(row)] = row
  argmax_BxL = np.argmax(np.asarray(nnx.jit(lambda m, t: m(t))(model, batch_BxL)), axis=-1)
  for b, prompt in enumerate(prompts):
    predicted = argmax_BxL[b, len(prompt) - 1:len(prompt) - 1 + NEW_TOKENS]
    np.testing.assert_array_equal(cached[b], predicted)


def test_sampling_draws_the_same_tokens_with_or_without_the_cache(scanned_model):
  model = scanned_model
  prompts = _ragged_prompts()
  kwargs = dict(max_new_tokens=NEW_TOKENS, temperature=1.5, top_p=0.9, rng=jax.random.key(3))
  cached = sampling.generate(model, prompts, kv_cache=True, **kwargs)
  np.testing.assert_array_equal(cached, sampling.generate(model, prompts, kv_cache=False, **kwargs))
  assert not np.array_equal(cached, sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS))


def test_top_k_and_top_p_keep_the_most_likely_tokens():
  logits = jnp.log(jnp.asarray([[0.1, 0.4, 0.2, 0.3]] * 3))
  kept = decoding.filter_logits(logits, temperature_B=jnp.ones(3),
                                top_k_B=jnp.asarray([0, 3, 1]),
                                top_p_B=jnp.asarray([0.6, 1.0, 1.0]))
  finite = np.isfinite(np.asarray(kept))
  # top_p 0.6: 0.4 alone falls short, 0.4 + 0.3 reaches it. top_k 3 drops the least likely.
  np.testing.assert_array_equal(finite, [[False, True, False, True],
                                         [False, True, True, True],
                                         [False, True, False, False]])


def test_stop_tokens_end_a_row_and_the_rest_repeat_them(model):
  prompts = _ragged_prompts()
  free = sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS)[0]
  stop = int(free[3])
  first_stop = int(np.argmax(free == stop))
  stopped = sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS, stop_tokens=(stop,))[0]
  np.testing.assert_array_equal(stopped[:first_stop + 1], free[:first_stop + 1])
  assert (stopped[first_stop:] == stop).all()
  np.testing.assert_array_equal(sampling.trim_at_stop(stopped, (stop,)), free[:first_stop])


def test_one_compile_serves_every_prompt_in_a_shape_bucket(model):
  rng = np.random.default_rng(2)
  sampling.generate(model, _ragged_prompts(), max_new_tokens=NEW_TOKENS)
  compiled = decoding.generate_padded._cache_size()
  # Prompts of 9..16 tokens and 3 or 4 rows share the (4 rows, 16 slots) bucket.
  sampling.generate(model, [rng.integers(0, 64, n) for n in (16, 10, 12, 9)],
                    max_new_tokens=NEW_TOKENS)
  sampling.generate(model, rng.integers(0, 64, (3, 12)), max_new_tokens=NEW_TOKENS)
  assert decoding.generate_padded._cache_size() == compiled


def test_generation_on_a_mesh_shards_the_cache_and_matches_one_device():
  model = build.build_model(tiny_config().model, seed=0)
  config = tiny_config(**{'mesh.data': 4, 'mesh.tensor': 2})
  mesh = sharding.make_mesh(config.mesh)
  prompts = _ragged_prompts()
  on_mesh = sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS, mesh=mesh,
                              rules=config.mesh.rules)
  np.testing.assert_array_equal(
      on_mesh, sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS))
  layout = model.init_cache(4, 16).constrain
  cache = jax.jit(lambda: layout(mesh, config.mesh.rules))()
  assert cache.keys.sharding.spec == jax.sharding.PartitionSpec(None, 'data', None, 'tensor')


def test_an_encoder_or_classifier_has_no_cache():
  encoder = build.build_model(tiny_config(**{'model.name': 'encoder'}).model, seed=0)
  with pytest.raises(ValueError, match='causal LM'):
    encoder.init_cache(1, 8)


def test_grouped_query_attention_caches_only_the_kv_heads_and_decodes_exactly():
  config = tiny_config(**{'model.num_kv_heads': 2, 'mesh.data': 4, 'mesh.tensor': 2})
  model = build.build_model(config.model, seed=0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 10)))
  cache = model.init_cache(2, 16)
  assert cache.keys.shape == (2, 2, 16, 2, 8)  # [layers, B, S, kv heads, head_dim]
  prefill, cache = model.extend(tokens[:, :6], cache)
  decoded, cache = model.extend(tokens[:, 6:7], cache)
  np.testing.assert_allclose(jnp.concatenate([prefill, decoded], axis=1), model(tokens)[:, :7],
                             rtol=1e-5, atol=1e-5)
  mesh = sharding.make_mesh(config.mesh)
  prompts = _ragged_prompts()
  np.testing.assert_array_equal(
      sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS, mesh=mesh,
                        rules=config.mesh.rules),
      sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS, kv_cache=False))
  layout = model.init_cache(4, 16).constrain
  sharded = jax.jit(lambda: layout(mesh, config.mesh.rules))()
  assert sharded.keys.sharding.spec == jax.sharding.PartitionSpec(None, 'data', None, 'tensor')
