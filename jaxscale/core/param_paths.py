"""Parameters by name: 'blocks.0.qkv_DxTxHxK', 'embed_VxD', ... for regexes in configs
(`optimizer.frozen`, `optimizer.lr_multipliers`, `init_from.load`/`.reinit`, `lora.targets`).

A name is the parameter's path in the model's `nnx.State`, joined with dots, without the
Variable's trailing `value`. Patterns match anywhere in the name (`re.search`): anchor them
(`^head`) to be strict.
"""

import re
from collections.abc import Callable, Iterable

import jax
from flax import nnx


def key_name(key) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def path_name(path) -> str:
  parts = [key_name(k) for k in path]
  if parts and parts[-1] == 'value':
    parts = parts[:-1]
  return '.'.join(parts)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def named_leaves(params) -> dict[str, object]:
  """{name: Variable (or array)} for every parameter of `params` (an nnx.State)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_variable)
  return {path_name(path): leaf for path, leaf in flat}


def map_named(fn: Callable[[str, object], object], params):
  """`params` with each Variable's value replaced by `fn(name, variable)` (structure kept, so the
  result is a mask or label tree optax accepts for these params)."""

  def replace(path, leaf):
    value = fn(path_name(path), leaf)
    return leaf.replace(value=value) if _is_variable(leaf) else value

  return jax.tree_util.tree_map_with_path(replace, params, is_leaf=_is_variable)


def matches(name: str, patterns: Iterable[str]) -> bool:
  return any(re.search(pattern, name) for pattern in patterns)


def check_patterns(patterns: Iterable[str], names: Iterable[str], key: str):
  """Raises naming `key` if a pattern is not a regex or matches no parameter (a typo would
  otherwise silently freeze, or load, nothing)."""
  names = list(names)
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f'{key}: {pattern!r} is not a regular expression ({e}).') from None
    if not any(re.search(pattern, name) for name in names):
      shown = ', '.join(names[:12]) + (', ...' if len(names) > 12 else '')
      raise ValueError(f'{key}: {pattern!r} matches no parameter. Parameter names: {shown}')


def stacked_layers(variable) -> bool:
  """Whether a Variable is a scanned stack of layers (leading 'layers' axis)."""
  axes = getattr(variable, 'get_metadata', lambda: {})().get('out_sharding') or ()
  return bool(axes) and axes[0] == 'layers'


def shape_of(leaf) -> tuple[int, ...]:
  return tuple(leaf.shape)


# Which parameters an optimizer config trains (`optimizer.frozen` / `optimizer.trainable`).


def is_frozen(name: str, opt_config) -> bool:
  """By `optimizer.frozen` regexes, unless an `optimizer.trainable` regex also matches."""
  return (matches(name, tuple(opt_config.get('frozen', ())))
          and not matches(name, tuple(opt_config.get('trainable', ()))))


def trainable_labels(params, opt_config):
  """'frozen' or 'trainable' for each parameter (optax.partition's labels)."""
  return map_named(
      lambda name, _: 'frozen' if is_frozen(name, opt_config) else 'trainable', params)


def trainable_mask(params, opt_config):
  """True for the parameters the optimizer updates."""
  return map_named(lambda name, _: not is_frozen(name, opt_config), params)
