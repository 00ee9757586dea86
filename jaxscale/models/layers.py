"""Building blocks shared by model families: sharded parameters, init scaling, RMSNorm, rotary
embeddings."""

import functools

import jax
import jax.numpy as jnp
import qwix.pallas
from flax import nnx

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def sharded_param(init, key, shape, logical_axes: tuple[str | None, ...]) -> nnx.Param:
  """An fp32 parameter annotated with logical axis names (mapped to mesh axes by config rules).

  Eager sharding is off: parameters are created inside a jit whose out_shardings place them.
  """
  return nnx.Param(init(key, shape, jnp.float32), out_sharding=logical_axes, eager_sharding=False)


def scale_init(module: nnx.Module, scale) -> None:
  """Multiplies `module`'s weights by `scale` in place: every parameter with two or more axes
  besides a scanned 'layers' axis (matrices, embeddings, kernels); vectors (norm gains, biases)
  keep their init. The models apply `config.model.init_scale` with it after their own init (μP's
  included, so the scale is a width-independent factor on μP's stds); a multi run applies each
  model's scale, a traced value, to the same freshly initialised weights."""
  for _, variable in nnx.iter_graph(module):
    if isinstance(variable, nnx.Param) and _weight_axes(variable) >= 2:
      variable[...] = variable[...] * scale


def _weight_axes(variable) -> int:
  axes = variable.get_metadata().get('out_sharding') or ()
  return variable[...].ndim - (1 if axes and axes[0] == 'layers' else 0)


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
  return rotary_tables_at(jnp.arange(seq_len), head_dim, theta)


def rotary_tables_at(positions, head_dim: int, theta: float):
  """sin/cos tables [..., head_dim // 2] at integer `positions` of any shape (e.g. [B, L] for
  left-padded rows whose positions start at different slots)."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.sin(angles), jnp.cos(angles)


def apply_rotary(x_BxLxHxK, sin, cos):
  """Rotates pairs (first half, second half) of each head's features by position. The tables are
  [L, K/2] (every row at positions 0..L-1) or [B, L, K/2] (positions per row)."""
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  if sin.ndim == 2:
    sin, cos = sin[None], cos[None]
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


def quantizing() -> bool:
  """Whether Qwix quantizes the einsums of the calling module (`jaxscale.compress.quantize`)."""
  return qwix.pallas.get_current_rule('einsum') is not None


def einsum_f32_accumulate(spec: str, x, w, out_dtype=None):
  """`jnp.einsum(spec, x, w)` summed in fp32, returned in `out_dtype` (default: x's dtype).

  The backward pass is written out so its two matmuls also take compute-dtype inputs with fp32
  accumulation. Left to autodiff, a bf16 matmul's gradient matmuls mix an fp32 cotangent with
  bf16 operands and fall back to fp32 kernels: on CPU the forward + backward of a bf16 MLP
  matmul runs 2x faster this way, with identical results.

  Inside a model quantized by Qwix (`jaxscale.compress.quantize`) whose rules cover this einsum,
  it is a plain `jnp.einsum` on the parameter itself: Qwix intercepts that call, recognises the
  weight and brings its own quantized forward and straight-through backward.
  """
  if hasattr(w, 'lora_einsum'):  # A LoRA weight with its adapter beside it (models.lora).
    return w.lora_einsum(spec, x, out_dtype)
  if quantizing():
    out = jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)
    return out.astype(out_dtype or x.dtype)
  return _einsum_f32_accumulate(spec, x, w, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _einsum_f32_accumulate(spec: str, x, w, out_dtype=None):
  out = jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)
  return out.astype(out_dtype or x.dtype)


def _einsum_fwd(spec, x, w, out_dtype):
  return _einsum_f32_accumulate(spec, x, w, out_dtype), (x, w)


def _einsum_bwd(spec, out_dtype, residuals, grad_out):
  x, w = residuals
  inputs, out = spec.split('->')
  x_axes, w_axes = inputs.split(',')
  grad_out = grad_out.astype(x.dtype)
  grad_x = jnp.einsum(f'{out},{w_axes}->{x_axes}', grad_out, w, preferred_element_type=jnp.float32)
  grad_w = jnp.einsum(f'{x_axes},{out}->{w_axes}', x, grad_out, preferred_element_type=jnp.float32)
  return grad_x.astype(x.dtype), grad_w.astype(w.dtype)


_einsum_f32_accumulate.defvjp(_einsum_fwd, _einsum_bwd)


# How much of each block's forward pass the backward pass may keep rather than recompute.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def apply_blocks(blocks, x, *block_args, scan_layers: bool, remat_policy: str):
  """Runs a stack of identical blocks over `x`: `blocks` is an nnx.List, or with `scan_layers` one
  module whose parameters are stacked on a leading 'layers' axis (built with nnx.vmap).

  Blocks run as a pure function of their parameter state, so the Python loop and the scan share
  one code path, with or without rematerialisation. Every block gets the same `block_args`
  (positional, after `x`; None is allowed, e.g. for "no padding mask").
  """
  graphdef, _ = nnx.split(blocks if scan_layers else blocks[0])

  # `block_args` (rotary tables, a padding mask or None) are explicit arguments rather than
  # closed-over values, so the checkpointed function sees every input it depends on.
  def block_fn(block_state, x, *args):
    return nnx.merge(graphdef, block_state)(x, *args)

  if remat_policy != 'none':
    block_fn = jax.checkpoint(block_fn, policy=REMAT_POLICIES[remat_policy],
                              prevent_cse=not scan_layers)
  if not scan_layers and quantizing():
    # Qwix's post-training quantization stores each quantized weight back into its module,
    # which only the blocks themselves (not copies merged from their state) keep.
    for block in blocks:
      x = block(x, *block_args)
    return x
  if scan_layers:
    x, _ = jax.lax.scan(lambda x, s: (block_fn(s, x, *block_args), None), x, nnx.state(blocks))
    return x
  for block in blocks:
    x = block_fn(nnx.state(block), x, *block_args)
  return x


def sow_for_capture(module: nnx.Module, name: str, value):
  """Hands `value` to an enclosing `nnx.capture(fn, nnx.Intermediate)` (the coordinate check,
  `jaxscale.hparams.coord_check`). Outside a capture it does nothing: a plain `sow` would store the
  value as a new variable in the module, changing the model state the train step carries."""
  if hasattr(module, '__captures__'):  # Set on every submodule by nnx.capture.
    module.sow(nnx.Intermediate, name, value)
