"""Device mesh and shardings: named mesh axes ('data', 'fsdp', 'tensor') and logical-axis rules.

Parameters carry logical axis names (see models/); `config.mesh.rules` maps each name to mesh
axes, so switching between data parallelism, FSDP and tensor parallelism is a config change.
Mesh axes are `Auto`: GSPMD propagates shardings through the step from its in/out shardings.
Activations are pinned at a few points of the model by logical names too (`constrain`): left to
propagation alone, a residual stream [batch, seq, embed] under FSDP may be laid out by its
weights' 'embed' axis instead of its batch, and XLA then gathers whole activations per device.
"""

import contextlib
import contextvars
import dataclasses
import functools
import math

import jax
import numpy as np
import optax
from flax import linen, nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Axis sizes in MESH_AXES order, with at most one -1 filled from the device count."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: only one axis may be -1 (auto), got {dict(zip(MESH_AXES, sizes))}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'config.mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}')
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(
          f'config.mesh: {dict(zip(MESH_AXES, sizes))} fixes {fixed} devices per replica, which '
          f'does not divide the {num_devices} devices available.')
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f'config.mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
        f'{num_devices} are available; set one axis to -1 to fill the rest.')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


@dataclasses.dataclass(frozen=True)
class ActivationRules:
  """The mesh and logical-axis rules that `constrain` applies while a step is traced."""
  mesh: Mesh
  rules: tuple


_ACTIVATION_RULES: contextvars.ContextVar[ActivationRules | None] = contextvars.ContextVar(
    'activation_rules', default=None)


def activation_rules(mesh: Mesh, mesh_config) -> ActivationRules | None:
  """The rules to pin activations by, or None when `config.mesh.constrain_activations` is off."""
  if not mesh_config.constrain_activations:
    return None
  return ActivationRules(mesh, _rules(mesh_config.rules))


@contextlib.contextmanager
def activations_constrained(rules: ActivationRules | None):
  token = _ACTIVATION_RULES.set(rules)
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def traced_with(fn, rules: ActivationRules | None):
  """`fn` whose trace (under jit) applies `rules` to the model's `constrain` points."""
  if rules is None:
    return fn

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activations_constrained(rules):
      return fn(*args, **kwargs)
  return wrapped


def constrain(x, logical_axes: tuple[str | None, ...]):
  """`x` laid out by its logical axis names, inside a step traced with activation rules (a
  no-op anywhere else: eager calls, generation, export)."""
  active = _ACTIVATION_RULES.get()
  if active is None:
    return x
  named = logical_to_named(P(*logical_axes), active.mesh, active.rules)
  return jax.lax.with_sharding_constraint(x, named)


def _rules(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def logical_to_named(logical_specs, mesh: Mesh, rules):
  """A tree of logical PartitionSpecs -> the matching tree of NamedShardings on `mesh`."""
  return linen.logical_to_mesh_sharding(logical_specs, mesh, _rules(rules))


def state_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree holding NNX variables with logical `out_sharding` metadata.

  Leaves without annotations (step counters, optimizer scalars) are replicated. A variable whose
  value is `optax.MaskedNode` (a parameter group's state for a parameter it does not own, e.g. a
  frozen one) holds no array and keeps its MaskedNode, so the shardings match the tree.
  """
  specs = nnx.get_partition_spec(abstract_tree)
  specs = jax.tree.map(lambda x, spec: x if _holds_masked_node(x) else spec, abstract_tree, specs,
                       is_leaf=_holds_masked_node)
  return logical_to_named(specs, mesh, rules)


def _holds_masked_node(x) -> bool:
  return isinstance(x, nnx.Variable) and isinstance(x.get_value(), optax.MaskedNode)


def abstract_arrays(tree, shardings):
  """ShapeDtypeStructs of `tree` placed by `shardings`: a compile or restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Batches are split along their leading axis over whichever mesh axes the 'batch' logical name
  maps to; the other axes are replicated, so one sharding fits arrays of every rank."""
  return logical_to_named(P('batch'), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global, sharded array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
