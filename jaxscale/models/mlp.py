"""Multi-layer perceptron on flattened images: the simplest baseline of a vision scaling study.

Images [B, H, W, C] are flattened to H*W*C features and pass through Dense layers of
`hidden_dims` widths (each followed by `activation`), then a Dense head to the class logits.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.config.validation import ConfigError, check_choice, check_positive_ints
from jaxscale.models.layers import (
    DTYPES, einsum_f32_accumulate as einsum, scale_init, sharded_param)
from jaxscale.models.registry import MODELS, check_image_classifier_sizes

ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': jax.nn.gelu, 'silu': jax.nn.silu, 'tanh': jnp.tanh}


class Dense(nnx.Module):
  """x @ W + b with fp32 parameters, compute-dtype inputs and fp32 accumulation."""

  def __init__(self, in_dim, out_dim, logical_axes, rngs: nnx.Rngs):
    self.kernel = sharded_param(nnx.initializers.lecun_normal(), rngs.params(), (in_dim, out_dim),
                                logical_axes)
    self.bias = nnx.Param(jnp.zeros((out_dim,), jnp.float32), out_sharding=logical_axes[1:],
                          eager_sharding=False)

  def __call__(self, x_BxI, out_dtype=None):
    y = einsum('bi,io->bo', x_BxI, self.kernel[...].astype(x_BxI.dtype), jnp.float32)
    return (y + self.bias[...]).astype(out_dtype or x_BxI.dtype)


def check_config(config, values: dict):
  del config
  check_image_classifier_sizes(values)
  check_choice('config.model.dtype', values['dtype'], DTYPES)
  check_positive_ints(values, 'config.model', 'channels')
  check_choice('config.model.activation', values['activation'], ACTIVATIONS)
  dims = values['hidden_dims']
  if not isinstance(dims, (tuple, list)) or not all(
      isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
    raise ConfigError(f'config.model.hidden_dims={dims!r} must be a tuple of positive integers '
                      '(layer widths), e.g. (512, 512).')


@MODELS.register('mlp', check=check_config)
class MLP(nnx.Module):
  """Images [B, H, W, C] (normalised float32) -> class logits [B, num_classes] (fp32)."""

  def __init__(self, *, num_classes: int, image_size: int, hidden_dims: tuple = (512, 512),
               activation: str = 'relu', channels: int = 3, dtype: str = 'float32',
               init_scale: float = 1.0, rngs: nnx.Rngs):
    if activation not in ACTIVATIONS:
      raise ValueError(f'activation={activation!r}; choose one of {sorted(ACTIVATIONS)}.')
    # Config files and config.json may hold the widths as a list.
    dims = (image_size * image_size * channels, *(int(d) for d in hidden_dims))
    # Hidden layers alternate 'embed'/'mlp' on their two axes, so with tensor parallelism the
    # activations between two layers stay sharded and each pair needs one all-reduce (Megatron).
    axes = [('embed', 'mlp') if i % 2 == 0 else ('mlp', 'embed') for i in range(len(dims) - 1)]
    self.hidden = nnx.List([Dense(d_in, d_out, ax, rngs)
                            for d_in, d_out, ax in zip(dims[:-1], dims[1:], axes)])
    self.head = Dense(dims[-1], num_classes, (None, 'classes'), rngs)
    self.activation = activation
    self.image_size, self.channels = image_size, channels
    self.dtype = DTYPES[dtype]
    if init_scale != 1.0:  # The kernels; biases stay zero (`scale_init`).
      scale_init(self, init_scale)

  def __call__(self, images_BxHxWxC):
    expected = (self.image_size, self.image_size, self.channels)
    if images_BxHxWxC.shape[1:] != expected:
      raise ValueError(f'MLP built for images of shape {expected}, got {images_BxHxWxC.shape[1:]};'
                       ' set config.model.image_size and channels to match the data.')
    x = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1).astype(self.dtype)
    for layer in self.hidden:
      # The nonlinearity runs in fp32 (see transformer.Block), its output in the compute dtype.
      x = ACTIVATIONS[self.activation](layer(x, jnp.float32)).astype(self.dtype)
    return self.head(x, jnp.float32)
