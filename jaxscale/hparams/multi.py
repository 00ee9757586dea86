"""Many small models in one compiled program: K models that differ only in array hyperparameters.

The train step is `jax.vmap`-ed over a leading model axis of the train state; each model's
learning rate and weight decay live in its optimizer state (`optax.inject_hyperparams`), its seed
picks its initial parameters, dropout and data order, and its init scale multiplies its freshly
initialised weights (`layers.scale_init`, as the model's own `init_scale` does). One compiled
program trains all K, so tiny models fill the machine instead of paying one process, one compile
and one small kernel each.

Each model is the run `python -m jaxscale.main --config C --config.optimizer.learning_rate=...`
would train, step for step (equal up to float reassociation): same init, same batches, same
schedule. `multi_loop` writes each model's rows into its own workdir.

Limits (`multi_support.unsupported`): one device (the model axis is not sharded), no checkpoints
(a stopped multi run starts again), no init_from, LoRA or frozen parameters; configs differing in
anything but the values of `ARRAY_HPARAMS` (shape, steps, batch size) are separate programs.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxscale import objectives
from jaxscale.metrics import flops
from jaxscale.models import MODELS, layers
from jaxscale.scaling.sweeps import multi_support
from jaxscale.train import checks, experiment, optim, steps

ARRAY_HPARAMS = multi_support.ARRAY_HPARAMS


def model_configs(config, values: dict[str, list]) -> list[ml_collections.ConfigDict]:
  """One config per model: `config` with the k-th of each value list set."""
  unknown = sorted(set(values) - set(ARRAY_HPARAMS))
  if unknown:
    raise ValueError(f'--values {unknown}: a multi run varies only '
                     f'{", ".join(ARRAY_HPARAMS)} (other keys change the program).')
  counts = {len(v) for v in values.values()}
  if len(counts) != 1:
    raise ValueError(f'--values lists of different lengths: '
                     f'{ {k: len(v) for k, v in values.items()} }; give one value per model each.')
  configs = []
  for k in range(counts.pop()):
    c = ml_collections.ConfigDict(config.to_dict())
    for name, options in values.items():
      *parents, leaf = ARRAY_HPARAMS[name].split('.')
      node = c
      for parent in parents:
        node = node[parent]
      # A config may leave model.init_scale to the model's default (a float).
      node[leaf] = type(node[leaf])(options[k]) if leaf in node else float(options[k])
    configs.append(c)
  return configs


def check_supported(config) -> None:
  problems = multi_support.unsupported(config)
  if problems:
    raise ValueError('A multi run trains plain models from scratch on one device; ' +
                     '; '.join(problems) + '. Train this config with `python -m jaxscale.main` '
                     'instead.')


def _optimizer_config(opt_config, learning_rate, weight_decay):
  """The optimizer config with (possibly traced) array values: ConfigDict's type check would
  refuse a tracer for a float key, so this copy is not type-safe."""
  c = ml_collections.ConfigDict(opt_config.to_dict(), type_safe=False)
  c.learning_rate, c.weight_decay = learning_rate, weight_decay
  return c


def make_optimizer(opt_config, num_train_steps: int, learning_rate, weight_decay):
  """`optim.make_optimizer`'s update rule with the peak learning rate and weight decay held in
  the optimizer state (optax.inject_hyperparams), so vmapped models each have their own."""
  factory = lambda learning_rate, weight_decay: optim.make_optimizer(
      _optimizer_config(opt_config, learning_rate, weight_decay), num_train_steps)[0]
  return optax.inject_hyperparams(factory)(learning_rate=learning_rate, weight_decay=weight_decay)


def _init_state(config, seed, learning_rate, weight_decay, init_scale):
  """One model's initial TrainState (arrays may be traced: this runs under vmap)."""
  kwargs = {k: v for k, v in config.model.items() if k not in ('name', 'init_scale')}
  # The same key `nnx.Rngs(config.seed)` makes from an integer seed.
  model = MODELS.get(config.model.name)(**kwargs, rngs=nnx.Rngs(jax.random.key(seed)))
  # What the model's own init_scale does, with this model's (traced) scale.
  layers.scale_init(model, init_scale)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  optimizer = make_optimizer(config.optimizer, config.num_train_steps, learning_rate, weight_decay)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                           opt_state=optimizer.init(params),
                           skipped_updates=jnp.zeros((), jnp.int32))
  return graphdef, state


def _one_train_step(state, batch, seed, *, config, graphdef, objective):
  hyperparams = state.opt_state.hyperparams
  optimizer = make_optimizer(config.optimizer, config.num_train_steps,
                             hyperparams['learning_rate'], hyperparams['weight_decay'])
  opt_config = _optimizer_config(config.optimizer, hyperparams['learning_rate'],
                                 hyperparams['weight_decay'])
  learning_rate_fn = optim.learning_rate_schedule(opt_config, config.num_train_steps)
  return steps.train_step(state, batch, graphdef=graphdef, optimizer=optimizer,
                          learning_rate_fn=learning_rate_fn, objective=objective,
                          grad_accum_steps=config.optimizer.grad_accum_steps,
                          skip_nonfinite=config.nonfinite_policy == 'skip', seed=seed)


def _one_eval_step(state, batch, seed, *, graphdef, objective):
  return steps.eval_step(state, batch, graphdef=graphdef, objective=objective, seed=seed)


@dataclasses.dataclass
class MultiExperiment:
  """K models built and compiled; nothing trained yet."""
  configs: list                # Per model, resolved (what each config.json records).
  datasets: list               # data.Datasets per model (shared objects where seeds agree).
  shared_data: bool            # All models read the same batches (one seed).
  graphdef: Any
  state: steps.TrainState      # Every leaf with a leading model axis of size K.
  seeds: jax.Array             # [K]
  train_step: Any              # (state, batch, seeds) -> (state, metrics [K])
  eval_step: Any
  size: flops.Accounting
  flops_per_step: float        # Per model.
  flops_per_step_xla: float | None = None  # Per model: XLA's count of the program / K.


def build(config, values: dict[str, list]) -> MultiExperiment:
  from jaxscale import data as data_lib  # TensorFlow loads here, after the configs are known good.

  check_supported(config)
  configs = model_configs(config, values)
  for c in configs:
    checks.validate(c, num_devices=1, process_count=1)
  datasets_by_seed = {}
  for c in configs:
    if c.seed not in datasets_by_seed:
      datasets_by_seed[c.seed] = data_lib.get_datasets(
          c.dataset, local_batch_size=c.batch_size, num_eval_batches=c.num_eval_batches,
          seed=c.seed)
  datasets = [datasets_by_seed[c.seed] for c in configs]
  configs = [experiment.resolve_config(c, d) for c, d in zip(configs, datasets)]
  first = configs[0]
  objective = objectives.make(objectives.name_for(first, datasets[0].task), first)

  seeds = jnp.asarray([c.seed for c in configs], jnp.int32)
  learning_rates = jnp.asarray([c.optimizer.learning_rate for c in configs], jnp.float32)
  weight_decays = jnp.asarray([c.optimizer.weight_decay for c in configs], jnp.float32)
  init_scales = jnp.asarray([multi_support.get(c, 'model.init_scale', 1.0) for c in configs],
                            jnp.float32)
  init = functools.partial(_init_state, first)
  graphdef, _ = nnx.eval_shape(lambda: init(0, 1.0, 0.0, 1.0))
  state = jax.jit(jax.vmap(lambda *args: init(*args)[1]))(seeds, learning_rates, weight_decays,
                                                          init_scales)

  shared_data = len(datasets_by_seed) == 1
  batch_axis = None if shared_data else 0
  train_step = jax.jit(
      jax.vmap(functools.partial(_one_train_step, config=first, graphdef=graphdef,
                                 objective=objective), in_axes=(0, batch_axis, 0)),
      donate_argnums=(0,))
  eval_step = jax.jit(jax.vmap(
      functools.partial(_one_eval_step, graphdef=graphdef, objective=objective),
      in_axes=(0, batch_axis, 0)))
  size = flops.accounting(first)
  return MultiExperiment(
      configs=configs, datasets=datasets, shared_data=shared_data, graphdef=graphdef,
      state=state, seeds=seeds, train_step=train_step, eval_step=eval_step, size=size,
      flops_per_step=first.batch_size * size.train_flops_per_example,
      flops_per_step_xla=_xla_flops_per_model(train_step, state, seeds, datasets[0], first,
                                              None if shared_data else len(configs)))


def _xla_flops_per_model(train_step, state, seeds, datasets, config, num_batches):
  """XLA's cost analysis of the K-model step, per model (reported beside the analytic count)."""
  lead = () if num_batches is None else (num_batches,)
  batch = {k: jax.ShapeDtypeStruct((*lead, config.batch_size, *spec.shape[1:]),
                                   spec.dtype.as_numpy_dtype)
           for k, spec in datasets.train.element_spec.items()}
  abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  # One device (multi runs refuse a mesh), whatever the host has.
  total = flops.compiled_flops(train_step.lower(abstract_state, batch, seeds).compile(),
                               num_devices=1)
  return total / len(seeds) if total else None


def stack_batches(batches: list[dict]) -> dict:
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}
