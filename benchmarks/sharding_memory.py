"""XLA's per-device memory for one train step on several meshes of 8 (simulated) devices.

  python benchmarks/sharding_memory.py --config configs/bench_small.py

Prints one JSON line per mesh: XLA's `memory_analysis()` of the compiled train step (argument,
output, temp and total bytes per device) beside jaxscale's own estimate. Nothing runs: the step
is only compiled, so the figures do not depend on the machine's load.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()

import json  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxscale.train import experiment, optim, steps  # noqa: E402
from jaxscale import objectives
from jaxscale.core import sharding
from jaxscale.metrics import memory

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/bench_small.py', 'Model config.')
_MESHES = flags.DEFINE_string(
    'meshes', 'data=8;fsdp=8;fsdp=4,tensor=2;fsdp=2,data=4',
    'Semicolon-separated meshes, each comma-separated axis=size (unnamed axes are 1).')
_CONSTRAIN = flags.DEFINE_string(
    'constrain_activations', 'true,false',
    'Values of config.mesh.constrain_activations to measure, comma-separated.')


def parse_mesh(text: str) -> dict[str, int]:
  mesh = {axis: 1 for axis in sharding.MESH_AXES}
  for item in text.split(','):
    axis, size = item.split('=')
    mesh[axis.strip()] = int(size)
  return mesh


def measure(config) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  optimizer, learning_rate_fn = optim.make_optimizer(config.optimizer, config.num_train_steps,
                                                     config.model)
  graphdef, state, state_shardings = experiment.create_train_state(config, mesh, optimizer)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  shape = (config.batch_size, config.dataset.seq_len)
  abstract_batch = {
      key: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
      for key, dtype in (('inputs', 'int32'), ('targets', 'int32'), ('weights', 'float32'))}
  objective = objectives.make('lm', config)
  train_step, _ = steps.compile_steps(
      graphdef, optimizer, learning_rate_fn, state_shardings, batch_sharding,
      sharding.replicated(mesh), objective=objective,
      activation_rules=sharding.activation_rules(mesh, config.mesh))
  abstract_state = sharding.abstract_arrays(state, state_shardings)
  compiled = train_step.lower(abstract_state, abstract_batch).compile()
  analysis = compiled.memory_analysis()
  forward = lambda p, ms, b: steps.loss_sums(graphdef, p, ms, b, objective=objective, train=True)
  estimate = memory.estimate(config, abstract_state, abstract_batch, forward)
  return {
      'argument_bytes': analysis.argument_size_in_bytes,
      'output_bytes': analysis.output_size_in_bytes,
      'temp_bytes': analysis.temp_size_in_bytes,
      'xla_total_bytes': memory.compiled_bytes(compiled),
      'estimate_bytes': estimate.total,
  }


def main(argv):
  del argv
  for constrain in _CONSTRAIN.value.split(','):
    for mesh_text in _MESHES.value.split(';'):
      config = ml_collections.ConfigDict(_CONFIG.value.to_dict())
      config.mesh.update(parse_mesh(mesh_text))
      config.mesh.constrain_activations = constrain.strip().lower() == 'true'
      row = {'mesh': mesh_text, 'constrain_activations': config.mesh.constrain_activations,
             **measure(config)}
      print(json.dumps(row), flush=True)


if __name__ == '__main__':
  sys.exit(app.run(main))
