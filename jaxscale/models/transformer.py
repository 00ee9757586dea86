"""Transformer over token ids: pre-norm RMSNorm, RoPE, SwiGLU or GELU MLP, tied or untied embeddings.

'transformer' is the decoder-only LM (causal attention); 'encoder' is the same model with
bidirectional attention (BERT-style, e.g. for masked-LM). Both take an optional padding mask,
whose padded keys no query attends to, and with `num_classes` > 0 both end in a classification
head on one pooled position instead of the LM logits.

Parameters are fp32 and carry logical axis names; activations run in `dtype` (bf16 or fp32) and
the logits are returned in fp32 for the loss. With `scan_layers` the blocks' parameters are
stacked on a leading 'layers' axis and the forward pass is one `jax.lax.scan`, so compile time
does not grow with depth.
"""

import inspect
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.models import MODELS
from jaxscale.models.layers import (DTYPES, RMSNorm, apply_blocks, apply_rotary, quantizing,
                                    rotary_tables, sharded_param)
from jaxscale.sharding import constrain
from jaxscale.models.layers import einsum_f32_accumulate as einsum

MLP_ACTIVATIONS = ('swiglu', 'gelu')
# Which position a classifier reads. pooling='' picks the attention's natural one: 'last' when
# causal (the only position that sees the whole sequence), 'cls' when bidirectional.
POOLINGS = ('cls', 'mean', 'last')
# Logical axes of activations (`constrain`): the residual stream is split by batch and whole in its
# model dimension ('act_embed'); attention heads and the MLP hidden split as their weights do.
RESIDUAL_AXES = ('batch', 'seq', 'act_embed')
HEADS_AXES = ('batch', 'seq', 'heads', 'kv')


def _normal(stddev: float):
  return nnx.initializers.normal(stddev)


class Block(nnx.Module):
  """Pre-norm attention + MLP block with fused QKV and (for SwiGLU) fused gate/up projections.

  `causal` chooses decoder (each position sees itself and earlier ones) or encoder attention.
  """

  def __init__(self, *, d_model, num_heads, mlp_dim, mlp_activation, num_layers, dtype,
               attention_impl, causal: bool = True, rngs: nnx.Rngs):
    head_dim = d_model // num_heads
    # Output projections shrink with depth so the residual stream's variance stays O(1).
    out_std = 1.0 / math.sqrt(2 * num_layers)
    self.attn_norm = RMSNorm(d_model)
    self.qkv_DxTxHxK = sharded_param(
        _normal(d_model ** -0.5), rngs.params(), (d_model, 3, num_heads, head_dim),
        ('embed', None, 'heads', 'kv'))
    self.out_HxKxD = sharded_param(
        _normal(out_std * d_model ** -0.5), rngs.params(), (num_heads, head_dim, d_model),
        ('heads', 'kv', 'embed'))
    self.mlp_norm = RMSNorm(d_model)
    num_inputs = 2 if mlp_activation == 'swiglu' else 1
    self.mlp_in_DxTxF = sharded_param(
        _normal(d_model ** -0.5), rngs.params(), (d_model, num_inputs, mlp_dim),
        ('embed', None, 'mlp'))
    self.mlp_out_FxD = sharded_param(
        _normal(out_std * mlp_dim ** -0.5), rngs.params(), (mlp_dim, d_model), ('mlp', 'embed'))
    self.mlp_activation = mlp_activation
    self.dtype = dtype
    self.attention_impl = attention_impl
    self.causal = causal

  def _padding(self, mask_BxL) -> dict:
    """dot_product_attention's arguments that hide padded keys (both combine with is_causal)."""
    if mask_BxL is None:
      return {}
    if self.attention_impl == 'cudnn':
      # cuDNN's fused kernel takes padding as per-sequence lengths, so real tokens must come
      # first (as the text pipelines pack them); a [B, 1, 1, L] mask would need an L x L bias.
      return {'key_value_seq_lengths': jnp.sum(mask_BxL, axis=1, dtype=jnp.int32)}
    # A key mask broadcast over heads and queries: any padding layout works.
    return {'mask': mask_BxL[:, None, None, :]}

  def __call__(self, x_BxLxD, sin, cos, mask_BxL=None):
    """`mask_BxL` (bool, True for real tokens) hides padded keys from every query; the outputs at
    padded positions are computed but meaningless. With attention_impl='cudnn' the padding must
    follow the real tokens."""
    dt = self.dtype
    x_BxLxD = constrain(x_BxLxD, RESIDUAL_AXES)
    h = self.attn_norm(x_BxLxD)
    # Three projections from slices of one weight, rather than one einsum into a stacked
    # [3, B, L, H, K] tensor: the backward pass then never assembles that stack.
    qkv_DxTxHxK = self.qkv_DxTxHxK[...].astype(dt)
    if quantizing():  # Qwix quantizes a weight where an op reads it, so it must read all of it.
      q, k, v = einsum('bld,dthk->tblhk', h, qkv_DxTxHxK)
    else:
      q, k, v = (einsum('bld,dhk->blhk', h, qkv_DxTxHxK[:, i]) for i in range(3))
    q, k, v = (constrain(t, HEADS_AXES) for t in (q, k, v))
    q, k = apply_rotary(q, sin, cos), apply_rotary(k, sin, cos)
    attn_BxLxHxK = jax.nn.dot_product_attention(
        q, k, v, is_causal=self.causal, implementation=self.attention_impl,
        **self._padding(mask_BxL))
    attn_BxLxHxK = constrain(attn_BxLxHxK, HEADS_AXES)
    x_BxLxD = x_BxLxD + einsum('blhk,hkd->bld', attn_BxLxHxK, self.out_HxKxD[...].astype(dt))

    h = self.mlp_norm(x_BxLxD)
    # The nonlinearity runs in fp32 whatever the compute dtype: as accurate, and on CPU 4x
    # faster than bf16 elementwise math (which XLA emulates with converts around every op).
    pre_TxBxLxF = einsum('bld,dtf->tblf', h, self.mlp_in_DxTxF[...].astype(dt), jnp.float32)
    pre_TxBxLxF = constrain(pre_TxBxLxF, (None, 'batch', 'seq', 'mlp'))
    if self.mlp_activation == 'swiglu':
      act_BxLxF = jax.nn.silu(pre_TxBxLxF[0]) * pre_TxBxLxF[1]
    else:
      act_BxLxF = jax.nn.gelu(pre_TxBxLxF[0])
    x_BxLxD = x_BxLxD + einsum('blf,fd->bld', act_BxLxF.astype(dt), self.mlp_out_FxD[...].astype(dt))
    return constrain(x_BxLxD, RESIDUAL_AXES)


def _pool(x_BxLxD, mask_BxL, pooling: str):
  """One feature vector per sequence: position 0, the mean over real tokens, or the last real
  token (the last True of the mask, wherever the padding is)."""
  if pooling == 'cls':
    return x_BxLxD[:, 0]
  seq_len = x_BxLxD.shape[1]
  if pooling == 'mean':
    if mask_BxL is None:
      return jnp.mean(x_BxLxD.astype(jnp.float32), axis=1).astype(x_BxLxD.dtype)
    weights_BxL = mask_BxL.astype(jnp.float32)
    # An all-padding row (e.g. eval padding) pools to zeros rather than NaN.
    count_Bx1 = jnp.maximum(jnp.sum(weights_BxL, axis=1, keepdims=True), 1.0)
    total_BxD = jnp.einsum('bld,bl->bd', x_BxLxD.astype(jnp.float32), weights_BxL)
    return (total_BxD / count_Bx1).astype(x_BxLxD.dtype)
  if mask_BxL is None:
    return x_BxLxD[:, -1]
  last_B = seq_len - 1 - jnp.argmax(mask_BxL[:, ::-1], axis=1)
  return jnp.take_along_axis(x_BxLxD, last_B[:, None, None], axis=1)[:, 0]


@MODELS.register('transformer')
class Transformer(nnx.Module):
  """Token ids [B, L] (and optionally a padding mask [B, L], 1 for real tokens) -> next-token
  logits [B, L, V], or with `num_classes` > 0 class logits [B, K] (fp32).

  `causal=False` makes every position attend to the whole (unpadded) sequence; the LM logits are
  then per-position predictions, as masked-LM wants. A classifier reads the final-normed features
  at one pooled position (`pooling`, see POOLINGS) through `head_DxK` + `head_bias_K`; 'cls' reads
  position 0, so the data puts its summary token there. A classifier has no unembedding.
  """

  def __init__(self, *, vocab_size: int, num_layers: int, d_model: int, num_heads: int,
               mlp_dim: int, mlp_activation: str = 'swiglu', tie_embeddings: bool = True,
               rope_theta: float = 10_000.0, dtype: str = 'float32', scan_layers: bool = False,
               remat_policy: str = 'none', attention_impl: str = 'xla', causal: bool = True,
               num_classes: int = 0, pooling: str = '', rngs: nnx.Rngs):
    if pooling and pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS} or '' (the default).")
    block_kwargs = dict(
        d_model=d_model, num_heads=num_heads, mlp_dim=mlp_dim, mlp_activation=mlp_activation,
        num_layers=num_layers, dtype=DTYPES[dtype], attention_impl=attention_impl, causal=causal)
    self.embed_VxD = sharded_param(
        _normal(d_model ** -0.5), rngs.params(), (vocab_size, d_model), ('vocab', 'embed'))
    if scan_layers:
      @nnx.split_rngs(splits=num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def stacked_blocks(rngs):
        return Block(**block_kwargs, rngs=rngs)
      self.blocks = stacked_blocks(rngs)
    else:
      self.blocks = nnx.List([Block(**block_kwargs, rngs=rngs) for _ in range(num_layers)])
    self.final_norm = RMSNorm(d_model)
    # Text datasets resolve num_classes to None (no classes): that is an LM too.
    self.num_classes = num_classes or 0
    if self.num_classes:
      # Zero-initialised, as ViT's head: every class starts at the same logit.
      self.head_DxK = sharded_param(nnx.initializers.zeros, rngs.params(),
                                    (d_model, self.num_classes), ('embed', 'classes'))
      self.head_bias_K = sharded_param(nnx.initializers.zeros, rngs.params(),
                                       (self.num_classes,), ('classes',))
    elif not tie_embeddings:
      self.unembed_DxV = sharded_param(
          _normal(d_model ** -0.5), rngs.params(), (d_model, vocab_size), ('embed', 'vocab'))
    self.tie_embeddings = tie_embeddings
    self.pooling = pooling or ('last' if causal else 'cls')
    self.scan_layers = scan_layers
    self.remat_policy = remat_policy
    self.head_dim = d_model // num_heads
    self.rope_theta = rope_theta
    self.dtype = DTYPES[dtype]

  def __call__(self, tokens_BxL, input_mask_BxL=None):
    mask_BxL = None if input_mask_BxL is None else input_mask_BxL.astype(bool)
    x_BxLxD = jnp.take(self.embed_VxD[...], tokens_BxL, axis=0).astype(self.dtype)
    x_BxLxD = constrain(x_BxLxD, RESIDUAL_AXES)
    sin, cos = rotary_tables(tokens_BxL.shape[1], self.head_dim, self.rope_theta)
    x_BxLxD = apply_blocks(self.blocks, x_BxLxD, sin, cos, mask_BxL, scan_layers=self.scan_layers,
                           remat_policy=self.remat_policy)
    x_BxLxD = self.final_norm(x_BxLxD)
    if self.num_classes:
      pooled_BxD = _pool(x_BxLxD, mask_BxL, self.pooling)
      return (einsum('bd,dk->bk', pooled_BxD, self.head_DxK[...].astype(self.dtype), jnp.float32)
              + self.head_bias_K[...])
    if self.tie_embeddings:
      logits_BxLxV = einsum('bld,vd->blv', x_BxLxD, self.embed_VxD[...].astype(self.dtype),
                            jnp.float32)
    else:
      logits_BxLxV = einsum('bld,dv->blv', x_BxLxD, self.unembed_DxV[...].astype(self.dtype),
                            jnp.float32)
    return constrain(logits_BxLxV, ('batch', 'seq', 'vocab'))


def _without_causal(init):
  """`init` with Transformer's signature less `causal`: config validation reads the signature."""
  params = inspect.signature(Transformer.__init__).parameters.values()
  init.__signature__ = inspect.Signature([p for p in params if p.name != 'causal'])
  return init


@MODELS.register('encoder')
class Encoder(Transformer):
  """The transformer with bidirectional attention (BERT-style): the same blocks, `causal=False`.

  Its name fixes the attention, so it takes every Transformer argument but `causal`; pooling
  defaults to 'cls'. For masked-LM leave `num_classes` 0 (logits [B, L, V]).
  """

  @_without_causal
  def __init__(self, **kwargs):
    super().__init__(**kwargs, causal=False)
