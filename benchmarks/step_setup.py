"""The compiled, sharded train step of a config and the state it starts from: what the step
benchmarks (train_throughput.py, checkpoint_overhead.py) time."""

from typing import Any, NamedTuple

from jaxscale.core import sharding
from jaxscale.train import experiment, optim, steps


class ShardedStep(NamedTuple):
  mesh: Any
  state: Any               # The initial train state, sharded.
  state_shardings: Any
  batch_sharding: Any
  train_step: Any          # Jitted: (state, batch) -> (state, metrics).


def sharded_train_step(config, *, objective=None,
                       constrain_activations: bool = False) -> ShardedStep:
  """The train step of `config` and the state it starts from. `objective` replaces the step's
  default for the dataset's task; `constrain_activations` applies the mesh's activation sharding
  rules."""
  mesh = sharding.make_mesh(config.mesh)
  optimizer, lr_fn = optim.make_optimizer(config.optimizer, config.num_train_steps,
                                          config.model)
  graphdef, state, state_shardings = experiment.create_train_state(config, mesh, optimizer)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  options = {}
  if objective is not None:
    options['objective'] = objective
  if constrain_activations:
    options['activation_rules'] = sharding.activation_rules(mesh, config.mesh)
  train_step, _ = steps.compile_steps(graphdef, optimizer, lr_fn, state_shardings, batch_sharding,
                                      sharding.replicated(mesh), config.optimizer.grad_accum_steps,
                                      **options)
  return ShardedStep(mesh, state, state_shardings, batch_sharding, train_step)
