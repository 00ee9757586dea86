"""Transformer over token ids: pre-norm RMSNorm, RoPE, SwiGLU or GELU MLP, tied or untied embeddings,
multi-head or grouped-query attention.

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

from jaxscale.config.validation import ConfigError, check_choice
from jaxscale.core.sharding import constrain
from jaxscale.models import attention, mup
from jaxscale.models.kv_cache import KVCache
from jaxscale.models.layers import (
    DTYPES, REMAT_POLICIES, RMSNorm, apply_blocks, apply_rotary, einsum_f32_accumulate as einsum,
    quantizing, rotary_tables, rotary_tables_at, scale_init, sharded_param, sow_for_capture)
from jaxscale.models.registry import MODELS

MLP_ACTIVATIONS = ('swiglu', 'gelu')
# Which position a classifier reads. pooling='' picks the attention's natural one: 'last' when
# causal (the only position that sees the whole sequence), 'cls' when bidirectional.
POOLINGS = ('cls', 'mean', 'last')
# Logical axes of activations (`constrain`): the residual stream is split by batch and whole in its
# model dimension ('act_embed'); attention heads and the MLP hidden split as their weights do.
RESIDUAL_AXES = ('batch', 'seq', 'act_embed')
HEADS_AXES = ('batch', 'seq', 'heads', 'kv')
KV_HEADS_AXES = ('batch', 'seq', 'kv_heads', 'kv')


def _normal(stddev: float):
  return nnx.initializers.normal(stddev)


class Block(nnx.Module):
  """Pre-norm attention + MLP block with fused QKV and (for SwiGLU) fused gate/up projections.

  With grouped-query attention (`num_kv_heads` < `num_heads`; 1 is multi-query) the queries
  have their own weight `q_DxHxK` and the keys and values a fused `kv_DxTxGxK` over G kv heads,
  each shared by num_heads / G consecutive query heads; with G == H one `qkv_DxTxHxK` holds all
  three. `causal` chooses decoder (each position sees itself and earlier ones) or encoder
  attention; `attention_scale` None is 1/sqrt(head_dim). Every matrix starts with variance
  1/fan_in, which is also μP's init for hidden matrices.
  """

  def __init__(self, *, d_model, num_heads, mlp_dim, mlp_activation, num_layers, dtype,
               attention_impl, causal: bool = True, attention_scale: float | None = None,
               num_kv_heads: int = 0, norm_eps: float = 1e-6, rngs: nnx.Rngs):
    head_dim = d_model // num_heads
    num_kv_heads = num_kv_heads or num_heads
    # Output projections shrink with depth so the residual stream's variance stays O(1).
    out_std = 1.0 / math.sqrt(2 * num_layers)
    self.attn_norm = RMSNorm(d_model, eps=norm_eps)
    if num_kv_heads == num_heads:
      self.qkv_DxTxHxK = sharded_param(
          _normal(d_model ** -0.5), rngs.params(), (d_model, 3, num_heads, head_dim),
          ('embed', None, 'heads', 'kv'))
    else:
      self.q_DxHxK = sharded_param(
          _normal(d_model ** -0.5), rngs.params(), (d_model, num_heads, head_dim),
          ('embed', 'heads', 'kv'))
      self.kv_DxTxGxK = sharded_param(
          _normal(d_model ** -0.5), rngs.params(), (d_model, 2, num_kv_heads, head_dim),
          ('embed', None, 'kv_heads', 'kv'))
    self.out_HxKxD = sharded_param(
        _normal(out_std * d_model ** -0.5), rngs.params(), (num_heads, head_dim, d_model),
        ('heads', 'kv', 'embed'))
    self.mlp_norm = RMSNorm(d_model, eps=norm_eps)
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
    self.attention_scale = attention_scale

  def __call__(self, x_BxLxD, sin, cos, mask_BxL=None):
    """`mask_BxL` (bool, True for real tokens) hides padded keys from every query; the outputs at
    padded positions are computed but meaningless. With attention_impl='cudnn' the padding must
    follow the real tokens."""
    x_BxLxD = constrain(x_BxLxD, RESIDUAL_AXES)
    q, k, v = self._qkv(self.attn_norm(x_BxLxD), sin, cos)
    attn_BxLxHxK = attention.attend(q, k, v, impl=self.attention_impl, scale=self.attention_scale,
                                    causal=self.causal, key_mask_BxS=mask_BxL)
    return self._out_and_mlp(x_BxLxD, constrain(attn_BxLxHxK, HEADS_AXES))

  def extend_cache(self, x_BxLxD, sin, cos, keys, values, layer, start, mask_BxLxS):
    """The block on L new positions, whose keys and values are first written into the cache
    (`keys`/`values` [layers, B, S, G, K], this block's row `layer`, slots start..start+L-1);
    each query then attends to the cache slots `mask_BxLxS` allows. Returns (x, keys, values)."""
    q, k, v = self._qkv(self.attn_norm(x_BxLxD), sin, cos)
    index = (layer, 0, start, 0, 0)
    keys = jax.lax.dynamic_update_slice(keys, k[None].astype(keys.dtype), index)
    values = jax.lax.dynamic_update_slice(values, v[None].astype(values.dtype), index)
    # The cache's dtype is the compute dtype, so q, k and v meet as in the full forward. cuDNN's
    # kernel takes no per-query mask over the cache, so it decodes with the XLA path.
    impl = 'xla' if self.attention_impl == 'cudnn' else self.attention_impl
    attn_BxLxHxK = attention.attend(
        q, keys[layer].astype(q.dtype), values[layer].astype(q.dtype), impl=impl,
        scale=self.attention_scale, mask_BxQxS=mask_BxLxS)
    return self._out_and_mlp(x_BxLxD, attn_BxLxHxK), keys, values

  def _qkv(self, h_BxLxD, sin, cos):
    # Three projections from slices of one weight, rather than one einsum into a stacked
    # [3, B, L, H, K] tensor: the backward pass then never assembles that stack.
    if hasattr(self, 'qkv_DxTxHxK'):
      qkv_DxTxHxK = self.qkv_DxTxHxK[...].astype(self.dtype)
      if quantizing():  # Qwix quantizes a weight where an op reads it, so it must read all of it.
        q, k, v = einsum('bld,dthk->tblhk', h_BxLxD, qkv_DxTxHxK)
      else:
        q, k, v = (einsum('bld,dhk->blhk', h_BxLxD, qkv_DxTxHxK[:, i]) for i in range(3))
      q, k, v = (constrain(t, HEADS_AXES) for t in (q, k, v))
    else:
      q = constrain(einsum('bld,dhk->blhk', h_BxLxD, self.q_DxHxK[...].astype(self.dtype)),
                    HEADS_AXES)
      kv_DxTxGxK = self.kv_DxTxGxK[...].astype(self.dtype)
      if quantizing():
        k, v = einsum('bld,dtgk->tblgk', h_BxLxD, kv_DxTxGxK)
      else:
        k, v = (einsum('bld,dgk->blgk', h_BxLxD, kv_DxTxGxK[:, i]) for i in range(2))
      k, v = (constrain(t, KV_HEADS_AXES) for t in (k, v))
    return apply_rotary(q, sin, cos), apply_rotary(k, sin, cos), v

  def _out_and_mlp(self, x_BxLxD, attn_BxLxHxK):
    dt = self.dtype
    attn_out_BxLxD = einsum('blhk,hkd->bld', attn_BxLxHxK, self.out_HxKxD[...].astype(dt))
    sow_for_capture(self, 'attention_output', attn_out_BxLxD)
    x_BxLxD = x_BxLxD + attn_out_BxLxD
    h = self.mlp_norm(x_BxLxD)
    # The nonlinearity runs in fp32 whatever the compute dtype: as accurate, and on CPU 4x
    # faster than bf16 elementwise math (which XLA emulates with converts around every op).
    mlp_in_DxTxF = self.mlp_in_DxTxF[...].astype(dt)
    if quantizing():  # Qwix must see the whole weight in one op (see `_qkv`).
      pre_BxLxF = tuple(einsum('bld,dtf->tblf', h, mlp_in_DxTxF, jnp.float32))
    else:
      # One [B, L, F] matmul per input, as for q, k and v: from the stacked [T, B, L, F] form
      # XLA:CPU's matmul writes its output as [F, B*L], and the activation and its gradient then
      # read it transposed (bench_small's bf16 step: 1.26x faster with GELU, 1.73x with SwiGLU).
      pre_BxLxF = tuple(einsum('bld,df->blf', h, mlp_in_DxTxF[:, i], jnp.float32)
                        for i in range(mlp_in_DxTxF.shape[1]))
    pre_BxLxF = tuple(constrain(p, ('batch', 'seq', 'mlp')) for p in pre_BxLxF)
    if self.mlp_activation == 'swiglu':
      act_BxLxF = jax.nn.silu(pre_BxLxF[0]) * pre_BxLxF[1]
    else:
      act_BxLxF = jax.nn.gelu(pre_BxLxF[0])
    mlp_out_BxLxD = einsum('blf,fd->bld', act_BxLxF.astype(dt), self.mlp_out_FxD[...].astype(dt))
    sow_for_capture(self, 'mlp_output', mlp_out_BxLxD)
    return constrain(x_BxLxD + mlp_out_BxLxD, RESIDUAL_AXES)


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


def check_config(config, values: dict):
  """The transformer's and encoder's own values (their keys are checked by the registry)."""
  check_choice('config.model.dtype', values['dtype'], DTYPES)
  check_choice('config.model.mlp_activation', values['mlp_activation'], MLP_ACTIVATIONS)
  check_choice('config.model.remat_policy', values['remat_policy'], REMAT_POLICIES)
  check_choice('config.model.attention_impl', values['attention_impl'], attention.IMPLEMENTATIONS)
  d_model, num_heads = values['d_model'], values['num_heads']
  if d_model % num_heads or (d_model // num_heads) % 2:
    raise ConfigError(f'config.model.d_model={d_model} must split into config.model.num_heads='
                      f'{num_heads} heads of even size (rotary embeddings rotate pairs).')
  num_kv_heads = values['num_kv_heads']
  if (isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, int) or num_kv_heads < 0
      or (num_kv_heads and num_heads % num_kv_heads)):
    raise ConfigError(f'config.model.num_kv_heads={num_kv_heads!r} must divide '
                      f'config.model.num_heads={num_heads} (1: multi-query; 0: num_heads).')
  norm_eps = values['norm_eps']
  if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps > 0:
    raise ConfigError(f'config.model.norm_eps={norm_eps!r} must be a positive number (the '
                      'RMSNorm epsilon).')
  if values['pooling']:  # '' is the model's default.
    check_choice('config.model.pooling', values['pooling'], POOLINGS)
  num_classes = values['num_classes'] or 0  # A text dataset resolves it to None: an LM.
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
    raise ConfigError(f'config.model.num_classes={num_classes!r} must be a non-negative integer '
                      '(0: LM logits over the vocabulary).')
  mup.check_config(config, values)


@MODELS.register('transformer', check=check_config)
class Transformer(nnx.Module):
  """Token ids [B, L] (and optionally a padding mask [B, L], 1 for real tokens) -> next-token
  logits [B, L, V], or with `num_classes` > 0 class logits [B, K] (fp32).

  `causal=False` makes every position attend to the whole (unpadded) sequence; the LM logits are
  then per-position predictions, as masked-LM wants. A classifier reads the final-normed features
  at one pooled position (`pooling`, see POOLINGS) through `head_DxK` + `head_bias_K`; 'cls' reads
  position 0, so the data puts its summary token there. A classifier has no unembedding.

  `parametrization` 'mup' (with `mup_base_width`, the width hyperparameters were tuned at) gives
  μP's initialisation, attention scale and readout multiplier (`jaxscale.models.mup`); its
  learning-rate multipliers are the optimizer's (`optim.make_optimizer` with the model config).
  `init_scale` multiplies the initial weights, μP's or SP's (`layers.scale_init`).
  `num_kv_heads` (0: `num_heads`) groups the queries over fewer key/value heads (`Block`), and
  the KV cache holds that many; `norm_eps` is every RMSNorm's epsilon.
  """

  def __init__(self, *, vocab_size: int, num_layers: int, d_model: int, num_heads: int,
               mlp_dim: int, mlp_activation: str = 'swiglu', tie_embeddings: bool = True,
               rope_theta: float = 10_000.0, dtype: str = 'float32', scan_layers: bool = False,
               remat_policy: str = 'none', attention_impl: str = 'einsum', causal: bool = True,
               num_classes: int = 0, pooling: str = '', parametrization: str = 'sp',
               mup_base_width: int = 0, mup_base_mlp_dim: int = 0, init_scale: float = 1.0,
               num_kv_heads: int = 0, norm_eps: float = 1e-6, rngs: nnx.Rngs):
    del mup_base_mlp_dim  # The optimizer's (mup.update_scaling): the MLP output's update scale.
    if pooling and pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS} or '' (the default).")
    mup.check_parametrization(parametrization, d_model, mup_base_width)
    scales = (parametrization, d_model, mup_base_width)
    block_kwargs = dict(
        d_model=d_model, num_heads=num_heads, mlp_dim=mlp_dim, mlp_activation=mlp_activation,
        num_layers=num_layers, dtype=DTYPES[dtype], attention_impl=attention_impl, causal=causal,
        attention_scale=mup.attention_scale(parametrization, d_model // num_heads),
        num_kv_heads=num_kv_heads, norm_eps=norm_eps)
    self.embed_VxD = sharded_param(
        _normal(mup.embedding_std(*scales)), rngs.params(), (vocab_size, d_model),
        ('vocab', 'embed'))
    if scan_layers:
      @nnx.split_rngs(splits=num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def stacked_blocks(rngs):
        return Block(**block_kwargs, rngs=rngs)
      self.blocks = stacked_blocks(rngs)
    else:
      self.blocks = nnx.List([Block(**block_kwargs, rngs=rngs) for _ in range(num_layers)])
    self.final_norm = RMSNorm(d_model, eps=norm_eps)
    # Text datasets resolve num_classes to None (no classes): that is an LM too.
    self.num_classes = num_classes or 0
    if self.num_classes:
      # Zero-initialised, as ViT's head: every class starts at the same logit.
      self.head_DxK = sharded_param(nnx.initializers.zeros, rngs.params(),
                                    (d_model, self.num_classes), ('embed', 'classes'))
      self.head_bias_K = sharded_param(nnx.initializers.zeros, rngs.params(),
                                       (self.num_classes,), ('classes',))
    elif not tie_embeddings:
      # μP starts an untied readout at zero (the `mup` package's readout_zero_init).
      unembed_init = (nnx.initializers.zeros if parametrization == 'mup'
                      else _normal(d_model ** -0.5))
      self.unembed_DxV = sharded_param(unembed_init, rngs.params(), (d_model, vocab_size),
                                       ('embed', 'vocab'))
    self.tie_embeddings = tie_embeddings
    self.readout_multiplier = mup.readout_multiplier(*scales)
    self.pooling = pooling or ('last' if causal else 'cls')
    self.scan_layers = scan_layers
    self.remat_policy = remat_policy
    self.head_dim = d_model // num_heads
    self.num_layers, self.num_heads, self.causal = num_layers, num_heads, causal
    self.num_kv_heads = num_kv_heads or num_heads
    self.rope_theta = rope_theta
    self.dtype = DTYPES[dtype]
    if init_scale != 1.0:
      scale_init(self, init_scale)

  def __call__(self, tokens_BxL, input_mask_BxL=None, positions_BxL=None):
    """`positions_BxL` (default 0..L-1 in every row) are the RoPE positions, e.g. shifted for
    left-padded rows."""
    mask_BxL = None if input_mask_BxL is None else input_mask_BxL.astype(bool)
    x_BxLxD = jnp.take(self.embed_VxD[...], tokens_BxL, axis=0).astype(self.dtype)
    x_BxLxD = constrain(x_BxLxD, RESIDUAL_AXES)
    sow_for_capture(self, 'embedding_output', x_BxLxD)
    if positions_BxL is None:
      sin, cos = rotary_tables(tokens_BxL.shape[1], self.head_dim, self.rope_theta)
    else:
      sin, cos = rotary_tables_at(positions_BxL, self.head_dim, self.rope_theta)
    x_BxLxD = apply_blocks(self.blocks, x_BxLxD, sin, cos, mask_BxL, scan_layers=self.scan_layers,
                           remat_policy=self.remat_policy)
    logits = self._readout(self._readout_input(x_BxLxD), mask_BxL)
    sow_for_capture(self, 'logits', logits)
    return logits

  def _readout_input(self, x_BxLxD):
    x_BxLxD = self.final_norm(x_BxLxD)
    # μP's multiplier goes on the readout's input, as in `mup`'s MuReadout: a head's bias is not
    # scaled.
    if self.readout_multiplier is not None:
      x_BxLxD = x_BxLxD * self.readout_multiplier
    return x_BxLxD

  def _readout(self, x_BxLxD, mask_BxL):
    if self.num_classes:
      pooled_BxD = _pool(x_BxLxD, mask_BxL, self.pooling)
      return (einsum('bd,dk->bk', pooled_BxD, self.head_DxK[...].astype(self.dtype), jnp.float32)
              + self.head_bias_K[...])
    return self._unembed(x_BxLxD)

  def _unembed(self, x_BxLxD):
    if self.tie_embeddings:
      logits_BxLxV = einsum('bld,vd->blv', x_BxLxD, self.embed_VxD[...].astype(self.dtype),
                            jnp.float32)
    else:
      logits_BxLxV = einsum('bld,dv->blv', x_BxLxD, self.unembed_DxV[...].astype(self.dtype),
                            jnp.float32)
    return constrain(logits_BxLxV, ('batch', 'seq', 'vocab'))

  # -------------------------------------------------------------------------------------------
  # Generation with a KV cache: `init_cache`, then `extend` with the prompt (prefill) and with
  # each new token (decode).

  def init_cache(self, batch: int, max_len: int, first_B=None) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens; `first_B` (default 0) is each
    row's first real slot when prompts are left-padded."""
    self._check_decoder()
    return KVCache.create(num_layers=self.num_layers, batch=batch, max_len=max_len,
                          num_heads=self.num_kv_heads, head_dim=self.head_dim, dtype=self.dtype,
                          first_B=first_B)

  def extend(self, tokens_BxL, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Next-token logits [B, L, V] of L tokens that continue the cached ones (all of a padded
    prompt at once, or one new token), and the cache with their keys and values added."""
    self._check_decoder()
    slots_L, positions_BxL = cache.positions(tokens_BxL.shape[1])
    sin, cos = rotary_tables_at(positions_BxL, self.head_dim, self.rope_theta)
    mask_BxLxS = cache.attention_mask(slots_L)
    x_BxLxD = jnp.take(self.embed_VxD[...], tokens_BxL, axis=0).astype(self.dtype)
    keys, values = cache.keys, cache.values
    if self.scan_layers:
      graphdef, stacked_state = nnx.split(self.blocks)

      def layer_step(carry, block_state):
        x, keys, values, layer = carry
        x, keys, values = nnx.merge(graphdef, block_state).extend_cache(
            x, sin, cos, keys, values, layer, cache.length, mask_BxLxS)
        return (x, keys, values, layer + 1), None

      (x_BxLxD, keys, values, _), _ = jax.lax.scan(
          layer_step, (x_BxLxD, keys, values, jnp.int32(0)), stacked_state)
    else:
      for layer, block in enumerate(self.blocks):
        x_BxLxD, keys, values = block.extend_cache(x_BxLxD, sin, cos, keys, values, layer,
                                                   cache.length, mask_BxLxS)
    logits_BxLxV = self._unembed(self._readout_input(x_BxLxD))
    return logits_BxLxV, cache.replace(keys=keys, values=values,
                                       length=cache.length + tokens_BxL.shape[1])

  def _check_decoder(self):
    if not self.causal or self.num_classes:
      raise ValueError('A KV cache serves next-token generation: it needs a causal LM '
                       '(model "transformer" with num_classes=0).')


def _without_causal(init):
  """`init` with Transformer's signature less `causal`: config validation reads the signature."""
  params = inspect.signature(Transformer.__init__).parameters.values()
  init.__signature__ = inspect.Signature([p for p in params if p.name != 'causal'])
  return init


@MODELS.register('encoder', check=check_config)
class Encoder(Transformer):
  """The transformer with bidirectional attention (BERT-style): the same blocks, `causal=False`.

  Its name fixes the attention, so it takes every Transformer argument but `causal`; pooling
  defaults to 'cls'. For masked-LM leave `num_classes` 0 (logits [B, L, V]).
  """

  @_without_causal
  def __init__(self, **kwargs):
    super().__init__(**kwargs, causal=False)
