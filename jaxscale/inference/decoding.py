"""The compiled generation loop: choose a token per row, feed it back, until the fixed length or
every row's stop token. `sampling.generate` is the friendly front; the server calls
`generate_padded` directly to batch requests with their own sampling options.

Prompts arrive left-padded to one length P (a shape bucket): row b's real tokens fill slots
first_B[b]..P-1, so every row's next token goes to slot P and one compiled program serves any mix
of prompt lengths. With a KV cache the prompt runs once (prefill) and each new token costs one
position (decode); without one, every step reruns the model on the whole [B, P + N] buffer, with
the same positions and padding mask, so both give the same logits.

Sampling options are per row (arrays), so requests with different options share a batch:
temperature 0 is greedy; otherwise logits / temperature, limited to the top_k most likely tokens
(0 = all) and to the smallest set whose probability reaches top_p (1 = all). Row b draws its
i-th token with fold_in(key_B[b], i), so its tokens do not depend on the rest of the batch.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def filter_logits(logits_BxV, temperature_B, top_k_B, top_p_B):
  """Scaled logits with everything outside the top-k and the top-p nucleus set to -inf."""
  scaled_BxV = logits_BxV / jnp.maximum(temperature_B, 1e-30)[:, None]
  vocab_size = logits_BxV.shape[-1]
  sorted_BxV = -jnp.sort(-scaled_BxV, axis=-1)
  rank_V = jnp.arange(vocab_size)
  k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, vocab_size), vocab_size)
  in_top_k_BxV = rank_V[None, :] < k_B[:, None]
  probs_BxV = jax.nn.softmax(jnp.where(in_top_k_BxV, sorted_BxV, -jnp.inf), axis=-1)
  # A token is in the nucleus if the tokens ranked above it hold less than top_p: the most
  # likely token always is.
  mass_above_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  keep_BxV = in_top_k_BxV & (mass_above_BxV < top_p_B[:, None])
  threshold_B = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1)
  return jnp.where(scaled_BxV >= threshold_B[:, None], scaled_BxV, -jnp.inf)


def choose_tokens(logits_BxV, step, options, *, sample: bool):
  """The next token of each row: argmax where temperature is 0, else a draw from the filtered
  distribution with the row's key folded with `step`."""
  greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  if not sample:
    return greedy_B
  filtered_BxV = filter_logits(logits_BxV, options['temperature'], options['top_k'],
                               options['top_p'])
  keys_B = jax.vmap(lambda key: jax.random.fold_in(key, step))(options['key'])
  drawn_B = jax.vmap(jax.random.categorical)(keys_B, filtered_BxV).astype(jnp.int32)
  return jnp.where(options['temperature'] > 0, drawn_B, greedy_B)


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'stop_tokens',
                                             'sample', 'kv_cache', 'mesh', 'rules'))
def generate_padded(graphdef, state, prompt_BxP, first_B, options, *, max_new_tokens: int,
                    stop_tokens: tuple[int, ...] = (), sample: bool = False,
                    kv_cache: bool = True, mesh=None, rules=None):
  """New tokens [B, max_new_tokens] after left-padded prompts [B, P] (real tokens from slot
  first_B[b]). `options` holds per-row 'temperature', 'top_k', 'top_p' and 'key' (used when
  `sample`). After a row's stop token (one of `stop_tokens`), its later tokens repeat it.
  Compiled once per (B, P, max_new_tokens) and options."""
  model = nnx.merge(graphdef, state)
  model.eval()
  batch, prompt_len = prompt_BxP.shape
  max_len = prompt_len + max_new_tokens

  if kv_cache:
    cache = model.init_cache(batch, max_len, first_B)
    if mesh is not None:
      cache = cache.constrain(mesh, rules)
    logits_BxPxV, cache = model.extend(prompt_BxP, cache)

    def next_logits(cache, tokens_B, step):
      del step
      logits_Bx1xV, cache = model.extend(tokens_B[:, None], cache)
      return logits_Bx1xV[:, 0], cache

    context = cache
  else:
    slots_S = jnp.arange(max_len, dtype=jnp.int32)
    mask_BxS = slots_S[None, :] >= first_B[:, None]
    positions_BxS = jnp.maximum(slots_S[None, :] - first_B[:, None], 0)
    buffer_BxS = jnp.zeros((batch, max_len), jnp.int32).at[:, :prompt_len].set(prompt_BxP)
    # Causal: the zeros after a slot cannot change its logits.
    logits_BxPxV = model(buffer_BxS, mask_BxS, positions_BxS)[:, :prompt_len]

    def next_logits(buffer_BxS, tokens_B, step):
      slot = prompt_len + step
      buffer_BxS = jax.lax.dynamic_update_slice(buffer_BxS, tokens_B[:, None], (0, slot))
      logits_BxSxV = model(buffer_BxS, mask_BxS, positions_BxS)
      return jax.lax.dynamic_index_in_dim(logits_BxSxV, slot, axis=1, keepdims=False), buffer_BxS

    context = buffer_BxS

  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  choose = functools.partial(choose_tokens, options=options, sample=sample)
  first_token_B = choose(logits_BxPxV[:, -1], 0)
  tokens_BxN = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(first_token_B)
  done_B = jnp.isin(first_token_B, stops)
  last_B = first_token_B

  def unfinished(carry):
    step, _, _, _, done_B = carry
    return (step < max_new_tokens) & ~jnp.all(done_B)

  def one_token(carry):
    step, context, tokens_BxN, last_B, done_B = carry
    logits_BxV, context = next_logits(context, last_B, step - 1)
    chosen_B = jnp.where(done_B, last_B, choose(logits_BxV, step))
    tokens_BxN = jax.lax.dynamic_update_slice(tokens_BxN, chosen_B[:, None], (0, step))
    return step + 1, context, tokens_BxN, chosen_B, done_B | jnp.isin(chosen_B, stops)

  steps_done, _, tokens_BxN, last_B, _ = jax.lax.while_loop(
      unfinished, one_token, (jnp.int32(1), context, tokens_BxN, last_B, done_B))
  # Rows that all stopped early: fill the untouched tail with each row's stop token.
  tail_N = jnp.arange(max_new_tokens) >= steps_done
  return jnp.where(tail_N[None, :], last_B[:, None], tokens_BxN)
