"""BERT's masked-LM corruption (Devlin et al. 2019): which tokens to predict and what the model sees.

Of the real (unpadded, non-special) tokens, each is chosen with probability `mask_rate`; a chosen
token becomes `mask_id` with probability `replace_with_mask`, a random ordinary token with
probability `replace_with_random`, and stays as it was otherwise (80/10/10 by default). The loss
and accuracy are taken on the chosen tokens only: their weight is 1, every other weight 0.

A pure function of a PRNG key and arrays, so it runs inside a jitted step (on device, per batch).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _ordinary_ids(random_vocab_size: int, excluded) -> np.ndarray:
  ids = np.setdiff1d(np.arange(random_vocab_size), np.asarray(excluded, np.int64))
  return ids.astype(np.int32)


def mask_tokens(rng, tokens_BxL, *, input_mask_BxL=None, mask_id: int, vocab_size: int,
                mask_rate: float = 0.15, replace_with_mask: float = 0.8,
                replace_with_random: float = 0.1, special_ids=(), random_vocab_size=None):
  """(inputs_BxL, targets_BxL, weights_BxL) for masked-LM training on `tokens_BxL`.

  `input_mask_BxL` (1/True for real tokens; None: all real) and `special_ids` (e.g. CLS, SEP,
  PAD, static ints) mark tokens that are never chosen; nor is `mask_id`. Random replacements are drawn uniformly
  from [0, random_vocab_size) (default vocab_size) less `special_ids` and `mask_id`: for bytes
  with specials appended after them, random_vocab_size=256 keeps them to the 256 byte values.

  Every sequence with a choosable token gets at least one chosen: where the coin flips chose
  none, its eligible token with the lowest draw is taken instead. That only matters for short
  sequences (a 512-token one chooses nothing with probability 0.85**512) and keeps each example's
  loss defined.

  targets are the original tokens; weights (float32) are 1 exactly on the chosen tokens.
  """
  if not 0.0 <= mask_rate <= 1.0:
    raise ValueError(f'mask_rate={mask_rate} must be in [0, 1].')
  if min(replace_with_mask, replace_with_random) < 0 or replace_with_mask + replace_with_random > 1:
    raise ValueError(f'replace_with_mask={replace_with_mask} and replace_with_random='
                     f'{replace_with_random} must be non-negative and sum to at most 1.')
  if not 0 <= mask_id < vocab_size:
    raise ValueError(f'mask_id={mask_id} is outside the vocabulary [0, {vocab_size}).')
  random_vocab_size = vocab_size if random_vocab_size is None else random_vocab_size
  if random_vocab_size > vocab_size:
    raise ValueError(f'random_vocab_size={random_vocab_size} exceeds vocab_size={vocab_size}.')
  ordinary_N = _ordinary_ids(random_vocab_size, (*special_ids, mask_id))
  if replace_with_random > 0 and not ordinary_N.size:
    raise ValueError(f'No ordinary token in [0, {random_vocab_size}) to replace with at random.')

  choose_key, action_key, random_key = jax.random.split(rng, 3)
  never_chosen = jnp.asarray((*special_ids, mask_id), tokens_BxL.dtype)
  eligible_BxL = ~jnp.isin(tokens_BxL, never_chosen)
  if input_mask_BxL is not None:
    eligible_BxL &= input_mask_BxL.astype(bool)
  # Ineligible positions draw 2, above any threshold and below no eligible draw.
  draw_BxL = jnp.where(eligible_BxL, jax.random.uniform(choose_key, tokens_BxL.shape), 2.0)
  chosen_BxL = draw_BxL < mask_rate
  first_BxL = jnp.arange(tokens_BxL.shape[1]) == jnp.argmin(draw_BxL, axis=1, keepdims=True)
  none_chosen_Bx1 = ~jnp.any(chosen_BxL, axis=1, keepdims=True)
  chosen_BxL |= first_BxL & none_chosen_Bx1 & eligible_BxL

  # One draw per position splits the chosen tokens: [0, mask) -> mask_id, [mask, mask + random)
  # -> a random ordinary token, the rest kept.
  action_BxL = jax.random.uniform(action_key, tokens_BxL.shape)
  to_mask_BxL = chosen_BxL & (action_BxL < replace_with_mask)
  to_random_BxL = chosen_BxL & ~to_mask_BxL & (action_BxL < replace_with_mask + replace_with_random)
  if ordinary_N.size:
    index_BxL = jax.random.randint(random_key, tokens_BxL.shape, 0, ordinary_N.size)
    random_BxL = jnp.asarray(ordinary_N)[index_BxL].astype(tokens_BxL.dtype)
  else:
    random_BxL = tokens_BxL  # replace_with_random is 0: never used.
  inputs_BxL = jnp.where(to_random_BxL, random_BxL, tokens_BxL)
  inputs_BxL = jnp.where(to_mask_BxL, jnp.asarray(mask_id, tokens_BxL.dtype), inputs_BxL)
  return inputs_BxL, tokens_BxL, chosen_BxL.astype(jnp.float32)
