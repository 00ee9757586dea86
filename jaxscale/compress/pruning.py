"""Magnitude pruning as an optax transformation (jaxpruner's `wrap_optax` is the model).

`wrap(inner, pruning_config, opt_config)` wraps the run's optimizer: the state holds the inner
optimizer's state, a boolean mask per prunable weight and an update counter, so checkpoints
carry the masks and a resumed run prunes exactly as an uninterrupted one would. Each update
makes the new parameters masked, `where(mask, u, -p)`: a pruned weight becomes exactly 0 and
stays 0, so saved parameters hold the zeros themselves.

Schedule (Zhu & Gupta 2017): at train step t (the parameters after t updates) the target is
s_t = s_f (1 - (1 - (t - start) / (end - start))^3); masks are recomputed at start_step +
k * update_every up to end_step (and at end_step itself), then kept. A mask keeps the weights of
largest magnitude; pruned weights score 0, so sparsity only grows.
- scope 'layer': each weight reaches s_t on its own; a scanned stack (leading 'layers' axis)
  is pruned per layer, as the unscanned model would be. 'global': one ranking over all weights.
- method 'nm': of every m consecutive weights along the input dimension, n are kept (2:4 for
  sparse tensor cores); the number pruned per group follows the same schedule up to m - n.

Never pruned: parameters matching `exclude` (embeddings, norms, biases by default), vectors and
scalars, and frozen parameters (not checkpointed, so their zeros would not survive a resume).
"""

import dataclasses
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxscale.config import validation
from jaxscale.config.validation import ConfigError
from jaxscale.core import param_paths

METHODS = ('magnitude', 'nm')
SCOPES = ('layer', 'global')


@validation.register_check
def check_pruning(config):
  p = config.pruning
  if not 0 <= p.sparsity < 1:
    raise ConfigError(f'config.pruning.sparsity={p.sparsity} must be in [0, 1) (0 = off).')
  validation.check_choice('config.pruning.method', p.method, METHODS)
  validation.check_choice('config.pruning.scope', p.scope, SCOPES)
  if not p.sparsity:
    return
  if p.method == 'nm':
    if not 0 < p.n < p.m:
      raise ConfigError(f'config.pruning: n={p.n} and m={p.m} must satisfy 0 < n < m (e.g. 2:4).')
    if abs(p.sparsity - (1 - p.n / p.m)) > 1e-9:
      raise ConfigError(f'config.pruning.method=nm with n={p.n}, m={p.m} prunes to sparsity '
                        f'{1 - p.n / p.m:g}; set config.pruning.sparsity={1 - p.n / p.m:g}.')
  if p.update_every < 1 or p.start_step < 0 or not 1 <= p.end_step <= config.num_train_steps or (
      p.end_step < p.start_step):
    raise ConfigError(
        f'config.pruning: update_every={p.update_every} must be >= 1 and start_step='
        f'{p.start_step} <= end_step={p.end_step}, with 1 <= end_step <= num_train_steps='
        f'{config.num_train_steps} (end_step is when the final sparsity is reached).')
  for pattern in p.exclude:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f'config.pruning.exclude: {pattern!r} is not a regular expression ({e}).')


class PruningState(NamedTuple):
  inner_state: optax.OptState
  masks: Any        # Like the params: a bool array per prunable weight (True = kept), MaskedNode
                    # for the others.
  count: jax.Array  # Updates applied so far.


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one prunable weight is ranked."""
  stacked: bool     # A scanned stack: the leading axis holds the layers, each pruned on its own.
  input_axis: int   # The per-layer axis N:M groups run along (the last input axis).


def final_sparsity(config) -> float:
  return 1 - config.n / config.m if config.method == 'nm' else config.sparsity


def target_sparsity(step, config):
  """s_t of the schedule at train step `step` (0 before start_step, s_f from end_step on)."""
  start, end = config.start_step, config.end_step
  if end == start:
    progress = jnp.where(step >= end, 1.0, 0.0)
  else:
    progress = jnp.clip((step - start) / (end - start), 0.0, 1.0)
  return final_sparsity(config) * (1 - (1 - progress) ** 3)


def is_mask_update(step, config):
  """Whether the masks are recomputed for train step `step`."""
  on_grid = (step - config.start_step) % config.update_every == 0
  in_window = (step >= config.start_step) & (step <= config.end_step)
  return in_window & (on_grid | (step == config.end_step))


def _input_axis(core_axes: tuple) -> int:
  # As in transfer.lora: weights writing back to the residual stream ('embed' last) and conv
  # kernels ('conv_out' last) read all their other axes; the others read their first.
  in_ndim = len(core_axes) - 1 if core_axes[-1] in ('embed', 'conv_out') else 1
  return in_ndim - 1


def layout(name: str, variable, config, opt_config=None) -> Layout | None:
  """The weight's Layout, or None where it is never pruned."""
  stacked = param_paths.stacked_layers(variable)
  shape = param_paths.shape_of(variable)
  core_shape = shape[1:] if stacked else shape
  if len(core_shape) < 2 or param_paths.matches(name, tuple(config.exclude)):
    return None
  if opt_config is not None and param_paths.is_frozen(name, opt_config):
    return None
  axes = variable.get_metadata().get('out_sharding') if isinstance(variable, nnx.Variable) else None
  core_axes = tuple(axes or (None,) * len(shape))[1 if stacked else 0:]
  result = Layout(stacked=stacked, input_axis=_input_axis(core_axes))
  inputs = core_shape[result.input_axis]
  if config.method == 'nm' and inputs % config.m:
    raise ConfigError(
        f'config.pruning.method=nm with m={config.m}: parameter {name} has {inputs} inputs '
        f'along axis {result.input_axis} (shape {shape}), not a multiple of {config.m}. '
        'Add it to config.pruning.exclude or choose another m.')
  return result


def layouts(params, config, opt_config=None) -> dict[str, Layout]:
  """{name: Layout} of every prunable weight of `params`; raises if there is none."""
  found = {}
  for name, variable in param_paths.named_leaves(params).items():
    found_layout = layout(name, variable, config, opt_config)
    if found_layout is not None:
      found[name] = found_layout
  if not found:
    raise ConfigError(f'config.pruning: no parameter is prunable (config.pruning.exclude='
                      f'{tuple(config.exclude)!r} excludes every weight matrix or kernel).')
  return found


def _value(leaf):
  return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


# ------------------------------------------------------------------------------------- masks


def _keep_largest(score, num_pruned):
  """True except for the `num_pruned` smallest scores (ties: the lower index goes first)."""
  flat = score.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  keep = jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) >= num_pruned)
  return keep.reshape(score.shape)


def _keep_n_of_m(score, axis: int, pruned_per_group, m: int):
  """In every group of m consecutive entries along `axis`, all but the `pruned_per_group`
  smallest."""
  moved = jnp.moveaxis(score, axis, -1)
  groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
  rank = jnp.argsort(jnp.argsort(groups, axis=-1, stable=True), axis=-1)  # 0 = the smallest.
  return jnp.moveaxis((rank >= pruned_per_group).reshape(moved.shape), -1, axis)


def _per_layer(fn, stacked: bool):
  return jax.vmap(fn) if stacked else fn


def compute_masks(scores: dict, found: dict[str, Layout], sparsity, config) -> dict:
  """{name: keep mask} for the magnitudes `scores` at target `sparsity`."""
  if config.method == 'nm':
    pruned = jnp.round(sparsity * config.m).astype(jnp.int32)
    def groups(name):
      axis = found[name].input_axis
      return _per_layer(lambda s: _keep_n_of_m(s, axis, pruned, config.m), found[name].stacked)
    return {name: groups(name)(score) for name, score in scores.items()}
  if config.scope == 'layer':
    def one_layer(score):
      return _keep_largest(score, jnp.round(sparsity * score.size).astype(jnp.int32))
    return {name: _per_layer(one_layer, found[name].stacked)(score)
            for name, score in scores.items()}
  names = list(scores)
  flat = jnp.concatenate([scores[name].reshape(-1) for name in names])
  keep = _keep_largest(flat, jnp.round(sparsity * flat.size).astype(jnp.int32))
  masks, offset = {}, 0
  for name in names:
    size = scores[name].size
    masks[name] = keep[offset:offset + size].reshape(scores[name].shape)
    offset += size
  return masks


# ------------------------------------------------------------------------------ transformation


def wrap(inner: optax.GradientTransformation, config, opt_config=None
         ) -> optax.GradientTransformation:
  """`inner` with the masks of `config` (config.pruning) applied after each update."""

  def init(params):
    found = layouts(params, config, opt_config)
    masks = param_paths.map_named(
        lambda name, leaf: jnp.ones(param_paths.shape_of(leaf), bool) if name in found
        else optax.MaskedNode(), params)
    return PruningState(inner.init(params), masks, jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('Pruning needs the parameters: call update(updates, state, params).')
    updates, inner_state = inner.update(updates, state.inner_state, params)
    found = layouts(params, config, opt_config)
    values = {n: _value(v) for n, v in param_paths.named_leaves(params).items() if n in found}
    steps = {n: _value(u) for n, u in param_paths.named_leaves(updates).items() if n in found}
    old = {n: _value(m) for n, m in param_paths.named_leaves(state.masks).items() if n in found}
    step = state.count + 1  # The train step the updated parameters belong to.

    def recompute():
      scores = {n: jnp.abs(jnp.where(old[n], values[n] + steps[n], 0)) for n in found}
      return compute_masks(scores, found, target_sparsity(step, config), config)

    masks = jax.lax.cond(is_mask_update(step, config), recompute, lambda: old)
    # Kept weights take their update; pruned ones become exactly 0 (p + (-p)).
    updates = param_paths.map_named(
        lambda n, u: jnp.where(masks[n], _value(u), -values[n]) if n in found else _value(u),
        updates)
    new_masks = param_paths.map_named(lambda n, m: masks[n] if n in found else _value(m),
                                      state.masks)
    return updates, PruningState(inner_state, new_masks, state.count + 1)

  return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------------- metrics

_LAYER_INDEX = re.compile(r'^([^.]+)(?:\.(\d+))?\.')


def group_name(name: str) -> str:
  """The layer a parameter belongs to, for logging: its top-level name and layer index."""
  match = _LAYER_INDEX.match(name)
  if not match:
    return name
  return match.group(1) + (f'.{match.group(2)}' if match.group(2) else '')


def sparsity_metrics(config, opt_config=None):
  """`metrics(params) -> {'sparsity': overall, 'sparsity/<layer>': ...}`: fractions of exact
  zeros among the prunable weights, per top-level layer (per layer of a scanned stack)."""

  def metrics(params) -> dict:
    found = layouts(params, config, opt_config)
    zeros, sizes = {}, {}

    def add(group, count, size):
      zeros[group] = zeros.get(group, 0) + count
      sizes[group] = sizes.get(group, 0) + size

    for name, leaf in param_paths.named_leaves(params).items():
      if name not in found:
        continue
      is_zero = _value(leaf) == 0
      if found[name].stacked:
        per_layer = jnp.sum(is_zero.reshape(is_zero.shape[0], -1), axis=1)
        for index in range(is_zero.shape[0]):
          add(f'{name.split(".")[0]}.{index}', per_layer[index], is_zero[0].size)
      else:
        add(group_name(name), jnp.sum(is_zero), is_zero.size)
    result = {'sparsity': sum(zeros.values()) / sum(sizes.values())}
    result.update({f'sparsity/{group}': zeros[group] / sizes[group] for group in sorted(zeros)})
    return result

  return metrics
