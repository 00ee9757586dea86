"""Vision Transformer (Dosovitskiy et al. 2021): patch embedding, learned positions, pre-LN blocks.

Images [B, H, W, C] are cut into non-overlapping patch_size x patch_size patches, each projected to
`width` features; a class token is prepended ('cls' pooling) or the tokens are averaged after the
last block ('gap'). Blocks are pre-LayerNorm attention + GELU MLP with biases, as in the original
and in big_vision, so the standard sizes reproduce the published parameter counts
(ViT-B/16 at 224 px and 1000 classes: 86,567,656). Parameters are fp32 with logical axis names;
activations run in `dtype`; logits are fp32.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.config.validation import ConfigError, check_choice, check_positive_ints
from jaxscale.models import attention, mup
from jaxscale.models.layers import (
    DTYPES, REMAT_POLICIES, apply_blocks, einsum_f32_accumulate as einsum, quantizing, scale_init,
    sharded_param, sow_for_capture)
from jaxscale.models.registry import MODELS, check_image_classifier_sizes

POOLINGS = ('cls', 'gap')

# Standard sizes (Dosovitskiy et al. 2021, Table 1; S from Touvron et al. 2021).
VIT_SIZES = {
    'Ti': dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    'S': dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    'B': dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    'L': dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    'H': dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),
}


def size_config(variant: str) -> dict:
  """Model kwargs for a size name like 'B/16' (size 'B', patch 16), e.g. for `config.model.update`."""
  size, _, patch = variant.partition('/')
  if size not in VIT_SIZES or not patch.isdigit():
    raise ValueError(f'ViT variant {variant!r} is not SIZE/PATCH with SIZE one of '
                     f'{", ".join(VIT_SIZES)} (e.g. "B/16").')
  return dict(VIT_SIZES[size], patch_size=int(patch))


def _layer_norm(width: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  axes = {'out_sharding': ('embed',), 'eager_sharding': False}
  return nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, scale_metadata=axes, bias_metadata=axes,
                       rngs=rngs)


def _zeros_param(shape, logical_axes) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=logical_axes, eager_sharding=False)


class EncoderBlock(nnx.Module):
  """Pre-LN multi-head self-attention (no mask) + GELU MLP, both with biases. `attention_scale`
  None is 1/sqrt(head_dim)."""

  def __init__(self, *, width, num_heads, mlp_dim, dtype, attention_impl,
               attention_scale: float | None = None, rngs: nnx.Rngs):
    head_dim = width // num_heads
    xavier = nnx.initializers.xavier_uniform()
    self.attn_norm = _layer_norm(width, dtype, rngs)
    # Q, K and V in one array; xavier over (width -> width) per projection, as for three Denses.
    self.qkv_DxTxHxK = sharded_param(
        nnx.initializers.xavier_uniform(in_axis=0, out_axis=(2, 3), batch_axis=(1,)),
        rngs.params(), (width, 3, num_heads, head_dim), ('embed', None, 'heads', 'kv'))
    self.qkv_bias_TxHxK = _zeros_param((3, num_heads, head_dim), (None, 'heads', 'kv'))
    self.out_HxKxD = sharded_param(
        nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2), rngs.params(),
        (num_heads, head_dim, width), ('heads', 'kv', 'embed'))
    self.out_bias_D = _zeros_param((width,), ('embed',))
    self.mlp_norm = _layer_norm(width, dtype, rngs)
    self.mlp_in_DxF = sharded_param(xavier, rngs.params(), (width, mlp_dim), ('embed', 'mlp'))
    self.mlp_in_bias_F = _zeros_param((mlp_dim,), ('mlp',))
    self.mlp_out_FxD = sharded_param(xavier, rngs.params(), (mlp_dim, width), ('mlp', 'embed'))
    self.mlp_out_bias_D = _zeros_param((width,), ('embed',))
    self.dtype = dtype
    self.attention_impl = attention_impl
    self.attention_scale = attention_scale

  def __call__(self, x_BxLxD):
    dt = self.dtype
    h = self.attn_norm(x_BxLxD)
    qkv_DxTxHxK, qkv_bias = self.qkv_DxTxHxK[...].astype(dt), self.qkv_bias_TxHxK[...].astype(dt)
    if quantizing():  # Qwix quantizes a weight where an op reads it, so it must read all of it.
      q, k, v = einsum('bld,dthk->tblhk', h, qkv_DxTxHxK) + qkv_bias[:, None, None]
    else:
      q, k, v = (einsum('bld,dhk->blhk', h, qkv_DxTxHxK[:, i]) + qkv_bias[i] for i in range(3))
    attn_BxLxHxK = attention.attend(q, k, v, impl=self.attention_impl,
                                    scale=self.attention_scale)
    attn_out_BxLxD = (einsum('blhk,hkd->bld', attn_BxLxHxK, self.out_HxKxD[...].astype(dt))
                      + self.out_bias_D[...].astype(dt))
    sow_for_capture(self, 'attention_output', attn_out_BxLxD)
    x_BxLxD = x_BxLxD + attn_out_BxLxD

    h = self.mlp_norm(x_BxLxD)
    # GELU in fp32 whatever the compute dtype (see transformer.Block for why).
    pre_BxLxF = einsum('bld,df->blf', h, self.mlp_in_DxF[...].astype(dt), jnp.float32)
    act_BxLxF = jax.nn.gelu(pre_BxLxF + self.mlp_in_bias_F[...]).astype(dt)
    mlp_out_BxLxD = (einsum('blf,fd->bld', act_BxLxF, self.mlp_out_FxD[...].astype(dt))
                     + self.mlp_out_bias_D[...].astype(dt))
    sow_for_capture(self, 'mlp_output', mlp_out_BxLxD)
    return x_BxLxD + mlp_out_BxLxD


def check_config(config, values: dict):
  check_image_classifier_sizes(values)
  check_choice('config.model.dtype', values['dtype'], DTYPES)
  check_positive_ints(values, 'config.model', 'channels', 'patch_size', 'width', 'depth',
                      'num_heads', 'mlp_dim')
  check_choice('config.model.pooling', values['pooling'], POOLINGS)
  check_choice('config.model.remat_policy', values['remat_policy'], REMAT_POLICIES)
  check_choice('config.model.attention_impl', values['attention_impl'], attention.IMPLEMENTATIONS)
  if values['width'] % values['num_heads']:
    raise ConfigError(f'config.model.width={values["width"]} must be a multiple of '
                      f'config.model.num_heads={values["num_heads"]}.')
  image_size = values['image_size'] or config.dataset.image_size
  if image_size % values['patch_size']:
    raise ConfigError(f'config.model.patch_size={values["patch_size"]} must divide the image size '
                      f'{image_size} (config.model.image_size, or config.dataset.image_size).')
  mup.check_config(config, values)


@MODELS.register('vit', check=check_config)
class ViT(nnx.Module):
  """Images [B, H, W, C] (normalised float32) -> class logits [B, num_classes] (fp32).

  `parametrization` 'mup' (with `mup_base_width`) gives μP's attention scale and readout
  multiplier (`jaxscale.models.mup`); its init already is μP's (patch and position embeddings do
  not depend on width, hidden matrices have variance ~1/width, the head starts at zero).
  """

  def __init__(self, *, num_classes: int, image_size: int, patch_size: int = 16,
               width: int = 384, depth: int = 12, num_heads: int = 6, mlp_dim: int = 1536,
               pooling: str = 'cls', channels: int = 3, dtype: str = 'float32',
               scan_layers: bool = False, remat_policy: str = 'none',
               attention_impl: str = 'einsum', parametrization: str = 'sp',
               mup_base_width: int = 0, mup_base_mlp_dim: int = 0, init_scale: float = 1.0,
               rngs: nnx.Rngs):
    del mup_base_mlp_dim  # The optimizer's (mup.update_scaling): the MLP output's update scale.
    if image_size % patch_size:
      raise ValueError(f'image_size={image_size} is not a multiple of patch_size={patch_size}.')
    if pooling not in POOLINGS:
      raise ValueError(f'pooling={pooling!r}; choose one of {POOLINGS}.')
    mup.check_parametrization(parametrization, width, mup_base_width)
    num_patches = (image_size // patch_size) ** 2
    num_tokens = num_patches + (pooling == 'cls')
    # The patch projection is a stride-patch_size convolution, stored in conv layout (P, P, C, D)
    # and applied as one matmul over flattened patches.
    self.patch_PxPxCxD = sharded_param(
        nnx.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3), rngs.params(),
        (patch_size, patch_size, channels, width), (None, None, None, 'embed'))
    self.patch_bias_D = _zeros_param((width,), ('embed',))
    if pooling == 'cls':
      self.cls_D = _zeros_param((width,), ('embed',))
    self.pos_LxD = sharded_param(nnx.initializers.normal(0.02), rngs.params(),
                                 (num_tokens, width), (None, 'embed'))
    block_kwargs = dict(width=width, num_heads=num_heads, mlp_dim=mlp_dim, dtype=DTYPES[dtype],
                        attention_impl=attention_impl,
                        attention_scale=mup.attention_scale(parametrization, width // num_heads))
    if scan_layers:
      @nnx.split_rngs(splits=depth)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def stacked_blocks(rngs):
        return EncoderBlock(**block_kwargs, rngs=rngs)
      self.blocks = stacked_blocks(rngs)
    else:
      self.blocks = nnx.List([EncoderBlock(**block_kwargs, rngs=rngs) for _ in range(depth)])
    self.final_norm = _layer_norm(width, DTYPES[dtype], rngs)
    # Zero-initialised head (big_vision's default): every class starts at the same logit.
    self.head_DxK = _zeros_param((width, num_classes), ('embed', 'classes'))
    self.head_bias_K = _zeros_param((num_classes,), ('classes',))
    self.readout_multiplier = mup.readout_multiplier(parametrization, width, mup_base_width)
    self.patch_size, self.pooling = patch_size, pooling
    self.scan_layers, self.remat_policy = scan_layers, remat_policy
    self.dtype = DTYPES[dtype]
    if init_scale != 1.0:  # Patch and position embeddings and the matrices (`scale_init`).
      scale_init(self, init_scale)

  def __call__(self, images_BxHxWxC):
    dt = self.dtype
    b, h, w, c = images_BxHxWxC.shape
    p = self.patch_size
    patches = images_BxHxWxC.astype(dt).reshape(b, h // p, p, w // p, p, c)
    patches_BxNxPxPxC = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p, p, c)
    x_BxLxD = (einsum('bnpqc,pqcd->bnd', patches_BxNxPxPxC, self.patch_PxPxCxD[...].astype(dt))
               + self.patch_bias_D[...].astype(dt))
    if self.pooling == 'cls':
      cls_Bx1xD = jnp.broadcast_to(self.cls_D[...].astype(dt), (b, 1, x_BxLxD.shape[-1]))
      x_BxLxD = jnp.concatenate([cls_Bx1xD, x_BxLxD], axis=1)
    if x_BxLxD.shape[1] != self.pos_LxD.shape[0]:
      raise ValueError(f'Images of {h}x{w} give {x_BxLxD.shape[1]} tokens, but the model was built '
                       f'for {self.pos_LxD.shape[0]}; set config.model.image_size to the image side.')
    x_BxLxD = x_BxLxD + self.pos_LxD[...].astype(dt)
    sow_for_capture(self, 'embedding_output', x_BxLxD)
    x_BxLxD = self.final_norm(apply_blocks(
        self.blocks, x_BxLxD, scan_layers=self.scan_layers, remat_policy=self.remat_policy))
    pooled_BxD = x_BxLxD[:, 0] if self.pooling == 'cls' else jnp.mean(x_BxLxD, axis=1)
    if self.readout_multiplier is not None:  # μP: on the head's input, so its bias is not scaled.
      pooled_BxD = pooled_BxD * self.readout_multiplier
    logits = (einsum('bd,dk->bk', pooled_BxD, self.head_DxK[...].astype(dt), jnp.float32)
              + self.head_bias_K[...])
    sow_for_capture(self, 'logits', logits)
    return logits
