"""Building blocks shared by model families: sharded parameters, RMSNorm, rotary embeddings."""

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def sharded_param(init, key, shape, logical_axes: tuple[str | None, ...]) -> nnx.Param:
  """An fp32 parameter annotated with logical axis names (mapped to mesh axes by config rules).

  Eager sharding is off: parameters are created inside a jit whose out_shardings place them.
  """
  return nnx.Param(init(key, shape, jnp.float32), out_sharding=logical_axes, eager_sharding=False)


class RMSNorm(nnx.Module):
  """Root-mean-square norm computed in fp32, returned in the compute dtype."""

  def __init__(self, dim: int, *, eps: float = 1e-6):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=('embed',),
                           eager_sharding=False)
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...]).astype(x.dtype)


def rotary_tables(seq_len: int, head_dim: int, theta: float):
  """sin/cos tables [seq_len, head_dim // 2] for rotary position embeddings."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  return jnp.sin(angles), jnp.cos(angles)


def apply_rotary(x_BxLxHxK, sin_LxK2, cos_LxK2):
  """Rotates pairs (first half, second half) of each head's features by position."""
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin_LxK2[None, :, None, :], cos_LxK2[None, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)
