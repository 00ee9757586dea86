"""Scaled dot-product attention over [B, L, H, K] queries and [B, S, G, K] keys and values.

G, the number of key/value heads, divides H (grouped-query attention; G == H is multi-head,
G == 1 multi-query): query head h reads kv head h // (H / G), as Llama's `repeat_kv` lays them
out. The kv heads are never repeated in memory: the einsum path groups the queries instead, and
`jax.nn.dot_product_attention` takes fewer kv heads itself.

Implementations (`config.model.attention_impl`):
  'einsum'  (the default) Two plain einsums in the compute dtype with an fp32 softmax between
            them, as nanodo and MaxText's default write it: under bf16 the logits are rounded to
            bf16 before the softmax; in fp32 it equals 'xla' up to rounding. On CPU a bf16 step
            of `configs/bench_small.py` (4096 tokens a batch) runs as fast as with 'xla' at
            sequence length 256, 1.12x faster at 512 and 1.52x at 1024.
  'xla'     `jax.nn.dot_product_attention`'s XLA path: fp32 logits whatever the compute dtype.
  'cudnn'   cuDNN's fused kernel (NVIDIA GPUs, bf16/fp16): padding is passed as per-sequence
            lengths, so real tokens must come first.
"""

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('einsum', 'xla', 'cudnn')


def attend(q_BxQxHxK, k_BxSxGxK, v_BxSxGxK, *, impl: str, scale: float | None = None,
           causal: bool = False, key_mask_BxS=None, mask_BxQxS=None):
  """Each query's attention-weighted mean of the values, [B, Q, H, K] (see the module docstring
  for the kv heads).

  `scale` None is 1/sqrt(K). A query sees a key where every given mask allows it: `causal` (key
  position <= query position, for Q == S), `key_mask_BxS` (bool, False for padded keys) and
  `mask_BxQxS` (bool, per query and key, e.g. over a KV cache; not with 'cudnn').
  """
  if impl == 'einsum':
    return _einsum_attention(q_BxQxHxK, k_BxSxGxK, v_BxSxGxK, scale=scale, causal=causal,
                             key_mask_BxS=key_mask_BxS, mask_BxQxS=mask_BxQxS)
  kwargs = {}
  if impl == 'cudnn':
    if mask_BxQxS is not None:
      raise ValueError("attention_impl='cudnn' takes padding as sequence lengths; a per-query "
                       "mask needs 'einsum' or 'xla'.")
    if key_mask_BxS is not None:
      # A [B, 1, 1, S] mask would need a materialised L x L bias in cuDNN's kernel.
      kwargs['key_value_seq_lengths'] = jnp.sum(key_mask_BxS, axis=1, dtype=jnp.int32)
  else:
    mask = _combined_mask(key_mask_BxS, mask_BxQxS)
    if mask is not None:
      kwargs['mask'] = mask
  return jax.nn.dot_product_attention(q_BxQxHxK, k_BxSxGxK, v_BxSxGxK, scale=scale,
                                      is_causal=causal, implementation=impl, **kwargs)


def _combined_mask(key_mask_BxS, mask_BxQxS):
  """The padding masks as one bool [B, 1 (heads), Q or 1, S], or None."""
  mask = None
  if key_mask_BxS is not None:
    mask = key_mask_BxS[:, None, None, :]
  if mask_BxQxS is not None:
    mask = mask_BxQxS[:, None] if mask is None else mask & mask_BxQxS[:, None]
  return mask


def _einsum_attention(q_BxQxHxK, k_BxSxGxK, v_BxSxGxK, *, scale, causal, key_mask_BxS,
                      mask_BxQxS):
  batch, num_queries, num_heads, head_dim = q_BxQxHxK.shape
  num_kv_heads = k_BxSxGxK.shape[2]
  scale = head_dim ** -0.5 if scale is None else scale
  # Query heads grouped by the kv head they share: [B, Q, G, H/G, K].
  q_BxQxGxRxK = q_BxQxHxK.reshape(batch, num_queries, num_kv_heads, -1, head_dim)
  # The scale is applied to the fp32 logits, where it fuses into the softmax.
  logits_BxHxQxS = jnp.einsum('bqgrk,bsgk->bgrqs', q_BxQxGxRxK, k_BxSxGxK).reshape(
      batch, num_heads, num_queries, -1).astype(jnp.float32)
  logits_BxHxQxS = logits_BxHxQxS * scale
  mask = _combined_mask(key_mask_BxS, mask_BxQxS)
  if causal:
    num_queries, num_keys = logits_BxHxQxS.shape[-2:]
    causal_QxS = jnp.tril(jnp.ones((num_queries, num_keys), bool))
    mask = causal_QxS if mask is None else mask & causal_QxS
  if mask is not None:
    # The lowest finite value rather than -inf: a query with every key masked gets uniform
    # weights (as jax.nn.dot_product_attention does) instead of NaN.
    logits_BxHxQxS = jnp.where(mask, logits_BxHxQxS, jnp.finfo(jnp.float32).min)
  probs_BxHxQxS = jax.nn.softmax(logits_BxHxQxS, axis=-1).astype(v_BxSxGxK.dtype)
  probs_BxGxRxQxS = probs_BxHxQxS.reshape(batch, num_kv_heads, -1, *probs_BxHxQxS.shape[2:])
  out_BxQxGxRxK = jnp.einsum('bgrqs,bsgk->bqgrk', probs_BxGxRxQxS, v_BxSxGxK)
  return out_BxQxGxRxK.reshape(q_BxQxHxK.shape)
