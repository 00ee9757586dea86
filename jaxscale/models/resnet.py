"""ResNet v1.5 (He et al. 2016; the stride sits on the 3x3 conv of bottleneck blocks, as in
torchvision and the MLPerf reference), with a width knob for width-scaling sweeps.

`depth` picks the stage layout (18/34: basic blocks, 50/101/152: bottlenecks); `width` is the stem's
channel count (64 standard), and stage i has width * 2**i channels (times 4 at a bottleneck's
output). 'imagenet' stem: 7x7/2 conv + 3x3/2 max pool; 'cifar' stem: 3x3/1 conv, no pool.
Convolutions have no bias (batch norm follows each one), padding is k // 2 on each side as in
torchvision, so ResNet-18/50 at 1000 classes have the published 11,689,512 / 25,557,032
parameters. Batch norm statistics are `nnx.BatchStat` variables: they update in `model.train()`
mode and stay frozen in `model.eval()` mode. Under jit with the batch sharded, XLA computes the
batch mean over the global batch, so statistics do not depend on the device count.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.config.validation import ConfigError, check_choice, check_positive_ints
from jaxscale.models.layers import DTYPES
from jaxscale.models.registry import MODELS, check_image_classifier_sizes

# depth -> (block kind, blocks per stage).
STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
BOTTLENECK_EXPANSION = 4
STEMS = ('imagenet', 'cifar')
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


def _conv(in_ch, out_ch, kernel, stride, dtype, rngs):
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=stride, padding=((kernel // 2, kernel // 2),) * 2,
      use_bias=False, dtype=dtype,
      # He-normal on fan-out, as torchvision initialises ResNets.
      kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
      kernel_metadata={'out_sharding': (None, None, 'conv_in', 'conv_out'),
                       'eager_sharding': False},
      rngs=rngs)


def _batch_norm(channels, dtype, rngs, zero_scale=False):
  return nnx.BatchNorm(
      channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
      # The last norm of a residual branch starts at zero, so each block starts as the identity
      # (Goyal et al. 2017): deep ResNets then train stably at large batch sizes.
      scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones, rngs=rngs)


class ConvBN(nnx.Module):
  """Conv (no bias) followed by batch norm; the ReLU is left to the caller."""

  def __init__(self, in_ch, out_ch, kernel, stride, dtype, rngs, zero_scale=False):
    self.conv = _conv(in_ch, out_ch, kernel, stride, dtype, rngs)
    self.norm = _batch_norm(out_ch, dtype, rngs, zero_scale)

  def __call__(self, x):
    return self.norm(self.conv(x))


class BasicBlock(nnx.Module):
  """Two 3x3 convs; the first carries the stride."""

  def __init__(self, in_ch, channels, stride, dtype, rngs):
    self.layers = nnx.List([ConvBN(in_ch, channels, 3, stride, dtype, rngs),
                            ConvBN(channels, channels, 3, 1, dtype, rngs, zero_scale=True)])
    out_ch = channels
    self.shortcut = (ConvBN(in_ch, out_ch, 1, stride, dtype, rngs)
                     if stride != 1 or in_ch != out_ch else None)
    self.out_channels = out_ch

  def __call__(self, x):
    return _residual(self.layers, self.shortcut, x)


class BottleneckBlock(nnx.Module):
  """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand to 4x channels."""

  def __init__(self, in_ch, channels, stride, dtype, rngs):
    out_ch = channels * BOTTLENECK_EXPANSION
    self.layers = nnx.List([ConvBN(in_ch, channels, 1, 1, dtype, rngs),
                            ConvBN(channels, channels, 3, stride, dtype, rngs),
                            ConvBN(channels, out_ch, 1, 1, dtype, rngs, zero_scale=True)])
    self.shortcut = (ConvBN(in_ch, out_ch, 1, stride, dtype, rngs)
                     if stride != 1 or in_ch != out_ch else None)
    self.out_channels = out_ch

  def __call__(self, x):
    return _residual(self.layers, self.shortcut, x)


def _residual(layers, shortcut, x):
  h = x
  for i, layer in enumerate(layers):
    h = layer(h)
    if i < len(layers) - 1:
      h = jax.nn.relu(h)
  return jax.nn.relu(h + (shortcut(x) if shortcut is not None else x))


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


def check_config(config, values: dict):
  del config
  check_image_classifier_sizes(values)
  check_choice('config.model.dtype', values['dtype'], DTYPES)
  check_positive_ints(values, 'config.model', 'channels', 'width')
  if values['depth'] not in STAGES:
    raise ConfigError(f'config.model.depth={values["depth"]!r} is not allowed; choose one of: '
                      f'{", ".join(map(str, STAGES))}')
  check_choice('config.model.stem', values['stem'], STEMS)


@MODELS.register('resnet', check=check_config)
class ResNet(nnx.Module):
  """Images [B, H, W, C] (normalised float32) -> class logits [B, num_classes] (fp32).

  `image_size` does not shape the network (global pooling makes it resolution-agnostic); it is
  the training resolution the FLOP accounting is computed at.
  """

  # Batch statistics are per forward pass: config validation refuses gradient accumulation.
  uses_batch_norm = True

  def __init__(self, *, num_classes: int, image_size: int, depth: int = 50, width: int = 64,
               stem: str = 'imagenet', channels: int = 3, dtype: str = 'float32',
               rngs: nnx.Rngs):
    if depth not in STAGES:
      raise ValueError(f'depth={depth}; choose one of {sorted(STAGES)}.')
    if stem not in STEMS:
      raise ValueError(f'stem={stem!r}; choose one of {STEMS}.')
    del image_size
    dt = DTYPES[dtype]
    kind, blocks_per_stage = STAGES[depth]
    self.stem = ConvBN(channels, width, 7 if stem == 'imagenet' else 3,
                       2 if stem == 'imagenet' else 1, dt, rngs)
    self.use_max_pool = stem == 'imagenet'
    blocks, in_ch = [], width
    for stage, num_blocks in enumerate(blocks_per_stage):
      for i in range(num_blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        block = BLOCKS[kind](in_ch, width * 2 ** stage, stride, dt, rngs)
        blocks.append(block)
        in_ch = block.out_channels
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(
        in_ch, num_classes, dtype=dt,
        kernel_metadata={'out_sharding': ('conv_out', 'classes'), 'eager_sharding': False},
        bias_metadata={'out_sharding': ('classes',), 'eager_sharding': False}, rngs=rngs)

  def __call__(self, images_BxHxWxC):
    x = jax.nn.relu(self.stem(images_BxHxWxC))
    if self.use_max_pool:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    pooled_BxC = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return self.head(pooled_BxC.astype(x.dtype)).astype(jnp.float32)
