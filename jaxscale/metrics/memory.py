"""Device memory: an estimate of the bytes each device needs, checked before anything compiles.

Parameters, optimizer state and other model state are exact: summed over the abstract
TrainState's leaves, each as the shard its sharding puts on one device. Gradients are taken as
one unsharded copy of the parameters (FSDP reduce-scatters them only at the end), and under FSDP
the gathered parameters as another. Activations are an *estimate*: for the transformer, the
tensors each layer keeps for the backward pass (a few B*L*D, B*L*F and B*H*L*L per layer, fewer
under rematerialisation) plus the logits; for other models, the sum of every intermediate of one
traced forward pass at the per-device micro-batch (an upper bound: XLA fuses most of them away).

`check` decides with XLA's own figure where it has one: the build compiles the train step from
the abstract state before allocating anything (`compiled_bytes`: arguments + outputs - donated +
temporaries, XLA's buffer assignment) and refuses a config whose figure exceeds the device's
memory. The estimate above is the fallback where the backend gives no memory analysis; its exact
part (the state) also refuses, before the compile, a config whose state alone cannot fit.
"""

import dataclasses
import math
import os

import jax
import numpy as np
from absl import logging

from jaxscale.config.validation import ConfigError
from jaxscale.core import sharding


class InsufficientMemoryError(ConfigError):
  pass


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per device."""
  params: int
  optimizer_state: int
  other_state: int          # Step counters, batch-norm statistics.
  gradients: int
  gathered_params: int      # FSDP: parameters all-gathered for the forward and backward.
  activations: int
  activations_method: str
  limit: int | None         # Device memory, None where it cannot be read.
  limit_source: str
  compiled: int | None = None  # XLA's figure for the compiled train step, once known.

  @property
  def total(self) -> int:
    return (self.params + self.optimizer_state + self.other_state + self.gradients
            + self.gathered_params + self.activations)

  @property
  def state(self) -> int:
    """The exact part: what the train state occupies, whatever the step does."""
    return self.params + self.optimizer_state + self.other_state

  @property
  def needed(self) -> int:
    """What the check compares with the limit: XLA's figure, else the estimate."""
    return self.compiled if self.compiled is not None else self.total

  def describe(self) -> str:
    limit = (f'{_gib(self.limit)} available ({self.limit_source})' if self.limit
             else f'device memory unknown ({self.limit_source})')
    xla = (f'XLA needs {_gib(self.compiled)} per device for the compiled step; '
           if self.compiled is not None else '')
    return (f'{xla}estimated {_gib(self.total)} per device: params {_gib(self.params)}, optimizer '
            f'state {_gib(self.optimizer_state)}, other state {_gib(self.other_state)}, '
            f'gradients {_gib(self.gradients)}, gathered params {_gib(self.gathered_params)}, '
            f'activations ~{_gib(self.activations)} '
            f'({self.activations_method}); {limit}')


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / 2**30:.3f} GiB'


def bytes_per_device(abstract_tree) -> int:
  """Bytes of one device's shard of every leaf (ShapeDtypeStructs carrying shardings)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def device_memory_limit(device=None) -> tuple[int | None, str]:
  """(bytes one device may use, where that figure came from)."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']), f'{device.device_kind} bytes_limit'
  if device.platform == 'cpu':  # Simulated CPU devices share the host's RAM.
    ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return ram // jax.local_device_count(), f'host RAM / {jax.local_device_count()} CPU devices'
  return None, f'{device.platform} reports no memory limit'


def _transformer_activations(config, micro_batch: int, tensor_shards: int) -> int:
  """Per-layer residuals kept for the backward pass, divided by what remat recomputes."""
  m, seq_len = config.model, config.dataset.seq_len
  width = 2 if m.dtype == 'bfloat16' else 4
  b_l = micro_batch * seq_len
  mlp_tensors = 3 if m.mlp_activation == 'swiglu' else 2
  layer_inputs = b_l * m.d_model * width
  # Norm outputs, q, k, v (k and v over the kv heads), attention output, residuals; the MLP's
  # hidden activations; the attention scores and probabilities.
  kv_fraction = (getattr(m, 'num_kv_heads', 0) or m.num_heads) / m.num_heads
  per_layer = ((6 + 2 * kv_fraction) * b_l * m.d_model + mlp_tensors * b_l * m.mlp_dim / tensor_shards
               + 2 * micro_batch * m.num_heads * seq_len**2 / tensor_shards) * width
  saved = {
      'none': m.num_layers * per_layer,
      'full': m.num_layers * layer_inputs + per_layer,  # One layer recomputed at a time.
      # Matmul outputs are kept; elementwise work and (for the batched variant) attention
      # scores are recomputed.
      'dots_saveable': m.num_layers * per_layer * 0.7 + per_layer,
      'dots_with_no_batch_dims_saveable': m.num_layers * per_layer * 0.5 + per_layer,
  }[m.remat_policy]
  logits = 3 * b_l * m.vocab_size * 4  # fp32 logits, their softmax and gradient.
  return int(saved + logits)


def _traced_activations(forward, abstract_args) -> int:
  """Sum of every intermediate in the traced forward pass: what backprop could keep."""
  jaxpr = jax.make_jaxpr(forward)(*abstract_args)
  # PRNG keys (an extended dtype, no numpy itemsize) are a few bytes each: left out.
  return sum(math.prod(v.aval.shape) * np.dtype(v.aval.dtype).itemsize
             for eqn in jaxpr.eqns for v in eqn.outvars
             if hasattr(v.aval, 'shape')
             and not jax.dtypes.issubdtype(v.aval.dtype, jax.dtypes.extended))


def estimate(config, abstract_state, abstract_batch, forward) -> Estimate:
  """Bytes per device to train `config`.

  `abstract_state` and `abstract_batch` are ShapeDtypeStructs with their shardings (the global
  batch); `forward(params, model_state, batch)` runs the model, traced only for models without
  a formula.
  """
  some_leaf = next(iter(abstract_batch.values()))
  rows_per_device = some_leaf.sharding.shard_shape(some_leaf.shape)[0]
  micro_batch = max(rows_per_device // config.optimizer.grad_accum_steps, 1)
  mesh_sizes = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, jax.device_count())))
  tensor_shards = mesh_sizes['tensor']
  if config.model.name in ('transformer', 'encoder'):  # The same blocks either way.
    activations = _transformer_activations(config, micro_batch, tensor_shards)
    method = f'transformer formula, remat {config.model.remat_policy}'
  else:
    local = {k: jax.ShapeDtypeStruct((micro_batch, *v.shape[1:]), v.dtype)
             for k, v in abstract_batch.items()}
    activations = _traced_activations(forward, (abstract_state.params, abstract_state.model_state,
                                                local))
    method = 'sum of traced forward intermediates, an upper bound'
  limit, source = device_memory_limit()
  params = bytes_per_device(abstract_state.params)
  unsharded_params = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                         for x in jax.tree.leaves(abstract_state.params)) // tensor_shards
  return Estimate(
      params=params, optimizer_state=bytes_per_device(abstract_state.opt_state),
      other_state=bytes_per_device((abstract_state.step, abstract_state.model_state,
                                    abstract_state.skipped_updates)),
      gradients=max(unsharded_params, params),
      gathered_params=max(unsharded_params - params, 0), activations=activations,
      activations_method=method, limit=limit, limit_source=source)


def check(config, estimate_: Estimate, state_only: bool = False):
  """Logs the estimate; raises (memory_check='error') or warns when what is needed exceeds the
  limit: XLA's figure where the estimate carries one, else the estimate's total. `state_only`
  checks just the exact state bytes (before compiling: a config whose state alone cannot fit is
  refused without waiting for the compile)."""
  needed = estimate_.state if state_only else estimate_.needed
  if not state_only:
    logging.info('Memory: %s.', estimate_.describe())
  if config.memory_check == 'off' or not estimate_.limit or needed <= estimate_.limit:
    return
  message = (
      f'This config does not fit in device memory: {estimate_.describe()}. To fit it, shard '
      f'parameters and optimizer state over more devices (--config.mesh.fsdp, now '
      f'{config.mesh.fsdp}), rematerialise activations (--config.model.remat_policy=full, now '
      f'{config.model.remat_policy!r}), lower --config.batch_size or raise '
      f'--config.optimizer.grad_accum_steps (activations scale with the micro-batch), or make '
      f'the model smaller. --config.memory_check=warn tries anyway.')
  if config.memory_check == 'error':
    raise InsufficientMemoryError(message)
  logging.warning('%s', message)


def compiled_bytes(compiled) -> int | None:
  """XLA's peak bytes per device for a compiled step: arguments + outputs - donated + temps."""
  try:
    analysis = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)


def with_compiled(estimate_: Estimate, compiled) -> Estimate:
  """The estimate carrying XLA's figure for `compiled` (unchanged where XLA gives none)."""
  return dataclasses.replace(estimate_, compiled=compiled_bytes(compiled))
