"""A run's config check: the schema's machinery with every component's own checks loaded.

The components register their checks when imported (`validation.register_check`); this module
imports all that a run can use, so `validate` sees every key's owner, and then checks the batch
against the device mesh.
"""

from jaxscale import models, objectives  # noqa: F401  (importing registers their checks)
from jaxscale.checkpoint import init_from  # noqa: F401
from jaxscale.compress import distill, pruning, quantize  # noqa: F401
from jaxscale.config import validation
from jaxscale.config.validation import ConfigError
from jaxscale.core import sharding
from jaxscale.models import lora  # noqa: F401
from jaxscale.train import optim  # noqa: F401


def validate(config, num_devices: int | None = None, process_count: int = 1):
  """Raises ConfigError naming the first bad key; returns quietly when the config is sound."""
  validation.check_keys_and_types(config)
  # Importing the datasets (TensorFlow Datasets, every builder) takes seconds: only once the keys
  # are known good, so a misspelt key fails at once.
  from jaxscale import data  # noqa: F401, PLC0415
  validation.validate(config)
  if num_devices is not None:
    try:
      shape = sharding.mesh_shape(config.mesh, num_devices)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    check_batch_fits_mesh(config, dict(zip(sharding.MESH_AXES, shape)), process_count)


def check_batch_fits_mesh(config, mesh_shape: dict[str, int], process_count: int):
  """The global (micro-)batch must split evenly over the batch mesh axes and the processes."""
  batch_axes = dict(config.mesh.rules).get('batch') or ()
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  shards = 1
  for axis in batch_axes:
    shards *= mesh_shape[axis]
  micro_batch = config.batch_size // config.optimizer.grad_accum_steps
  if micro_batch % shards or config.batch_size % process_count:
    raise ConfigError(
        f'config.batch_size={config.batch_size} (micro-batch {micro_batch}) must divide evenly '
        f'over the batch mesh axes {batch_axes} of sizes {[mesh_shape[a] for a in batch_axes]} '
        f'({shards} shards) and over {process_count} processes.')
