"""Masked-LM corruption: BERT's 15% chosen, 80/10/10 split, padding and special tokens left alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.objectives.mlm_masking import mask_tokens

# Bytes 0..255, then the specials: PAD, CLS, SEP, MASK.
PAD, CLS, SEP, MASK = 256, 257, 258, 259
SPECIALS = (PAD, CLS, SEP, MASK)
VOCAB = 260
BATCH, SEQ_LEN = 64, 512


def _batch(seed=0):
  """Byte sequences framed by CLS ... SEP and right-padded to random lengths."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 256, (BATCH, SEQ_LEN)).astype(np.int32)
  lengths = rng.integers(SEQ_LEN // 4, SEQ_LEN + 1, BATCH)
  input_mask = np.arange(SEQ_LEN)[None, :] < lengths[:, None]
  tokens[:, 0] = CLS
  tokens[np.arange(BATCH), lengths - 1] = SEP
  tokens[~input_mask] = PAD
  return tokens, input_mask


def _mask(key, tokens, input_mask, **kwargs):
  fn = jax.jit(lambda k, t, m: mask_tokens(k, t, input_mask_BxL=m, mask_id=MASK, vocab_size=VOCAB,
                                           special_ids=SPECIALS, random_vocab_size=256, **kwargs))
  return [np.asarray(x) for x in fn(key, jnp.asarray(tokens), jnp.asarray(input_mask))]


def _within_5_sigma(count, trials, p):
  sigma = np.sqrt(trials * p * (1 - p))
  assert abs(count - trials * p) < 5 * sigma, (count, trials * p, sigma)


def test_chosen_fraction_and_the_80_10_10_split():
  tokens, input_mask = _batch()
  inputs, targets, weights = _mask(jax.random.key(0), tokens, input_mask)
  eligible = input_mask & ~np.isin(tokens, SPECIALS)
  chosen = weights == 1
  _within_5_sigma(chosen.sum(), eligible.sum(), 0.15)
  masked = chosen & (inputs == MASK)
  kept = chosen & (inputs == tokens)
  randomised = chosen & ~masked & ~kept
  num_chosen = chosen.sum()
  _within_5_sigma(masked.sum(), num_chosen, 0.8)
  # A random replacement equals the original 1 time in 256 and then counts as kept.
  p_random = 0.1 * 255 / 256
  _within_5_sigma(randomised.sum(), num_chosen, p_random)
  _within_5_sigma(kept.sum(), num_chosen, 1 - 0.8 - p_random)
  np.testing.assert_array_equal(targets, tokens)


def test_only_real_ordinary_tokens_are_chosen_and_the_rest_is_untouched():
  tokens, input_mask = _batch(1)
  inputs, _, weights = _mask(jax.random.key(1), tokens, input_mask)
  assert weights.dtype == np.float32 and set(np.unique(weights)) == {0.0, 1.0}
  chosen = weights == 1
  assert not chosen[~input_mask].any()
  assert not chosen[np.isin(tokens, SPECIALS)].any()
  np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])
  randomised = chosen & (inputs != MASK)
  assert randomised.any()
  assert inputs[randomised].max() < 256  # Never a special id.


def test_random_replacements_are_never_special():
  # Every chosen token replaced at random, and specials inside the random range too.
  tokens, input_mask = _batch(2)
  inputs, _, weights = _mask(jax.random.key(2), tokens, input_mask, mask_rate=1.0,
                             replace_with_mask=0.0, replace_with_random=1.0)
  chosen = weights == 1
  np.testing.assert_array_equal(chosen, input_mask & ~np.isin(tokens, SPECIALS))
  assert not np.isin(inputs[chosen], SPECIALS).any()
  fn = lambda: mask_tokens(jax.random.key(3), jnp.asarray(tokens), mask_id=3, vocab_size=VOCAB,
                           special_ids=(0, 1, 2), mask_rate=1.0, replace_with_mask=0.0,
                           replace_with_random=1.0)
  inputs, _, weights = jax.jit(fn)()
  # Without an input mask every token but the specials and mask_id is real, padding ids included.
  np.testing.assert_array_equal(weights, ~np.isin(tokens, (0, 1, 2, 3)))
  replaced = np.asarray(inputs)[np.asarray(weights) == 1]
  assert replaced.min() >= 4 and replaced.max() < VOCAB  # Neither specials nor mask_id.


def test_every_sequence_with_a_real_token_has_one_chosen():
  tokens = jnp.full((256, 4), PAD, jnp.int32).at[:, :2].set(7)
  input_mask = jnp.broadcast_to(jnp.arange(4) < 2, (256, 4))
  tokens = tokens.at[0].set(PAD)  # Nothing to choose: stays unchosen.
  input_mask = input_mask.at[0].set(False)
  _, _, weights = _mask(jax.random.key(4), tokens, input_mask)
  assert weights[0].sum() == 0
  assert (weights[1:].sum(axis=1) >= 1).all()
  assert weights[:, 2:].sum() == 0


def test_deterministic_for_a_key_and_different_for_another():
  tokens, input_mask = _batch(3)
  a = _mask(jax.random.key(5), tokens, input_mask)
  b = _mask(jax.random.key(5), tokens, input_mask)
  c = _mask(jax.random.key(6), tokens, input_mask)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[2], c[2]) and not np.array_equal(a[0], c[0])


@pytest.mark.parametrize('kwargs', [
    dict(mask_rate=1.5), dict(replace_with_mask=0.95), dict(mask_id=VOCAB),
    dict(random_vocab_size=VOCAB + 1)])
def test_bad_arguments_are_refused(kwargs):
  args = {'mask_id': MASK, 'vocab_size': VOCAB, **kwargs}
  with pytest.raises(ValueError):
    mask_tokens(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), **args)


def test_the_objective_never_chooses_or_draws_a_special_token_the_separator_included():
  from jaxscale.config import config_base  # noqa: PLC0415
  from jaxscale.data import special_tokens  # noqa: PLC0415
  from jaxscale import objectives  # noqa: PLC0415
  config = config_base.get_base_config()
  config.mlm.mask_rate = 1.0
  seen = []

  def model(inputs_BxL):
    seen.append(inputs_BxL)
    return jax.nn.one_hot(inputs_BxL, special_tokens.BYTE_VOCAB_WITH_SPECIALS)

  sums = objectives.make('mlm', config)
  # Documents of ordinary bytes, each ended by the separator: only the bytes are chosen.
  tokens = np.ones((BATCH, SEQ_LEN), np.int32)
  tokens[:, 7::8] = special_tokens.BYTE_SEPARATOR
  batch = {'inputs': jnp.asarray(tokens), 'weights': jnp.ones((BATCH, SEQ_LEN), jnp.float32)}
  result = sums(model, batch, train=True, rng=jax.random.key(0))
  assert float(result['weight_sum']) == np.sum(tokens != special_tokens.BYTE_SEPARATOR)
  inputs = np.asarray(seen[-1])
  separators = tokens == special_tokens.BYTE_SEPARATOR
  np.testing.assert_array_equal(inputs[separators], tokens[separators])
  # ~3,000 random replacements: none is the separator (1 in 256 would be without the rule).
  replaced = ~separators & (inputs != 1) & (inputs != special_tokens.MASK_ID)
  assert replaced.sum() > 1000
  assert not np.isin(inputs[replaced], (special_tokens.BYTE_SEPARATOR, special_tokens.PAD_ID,
                                    special_tokens.CLS_ID)).any()


def test_the_separator_must_be_a_base_vocabulary_id():
  from jaxscale.config import config_base, validation  # noqa: PLC0415
  from jaxscale.objectives import mlm  # noqa: PLC0415
  config = config_base.get_base_config()
  config.objective = 'mlm'
  mlm.check_mlm(config)
  config.mlm.separator_id = 256
  with pytest.raises(validation.ConfigError, match='separator_id'):
    mlm.check_mlm(config)
