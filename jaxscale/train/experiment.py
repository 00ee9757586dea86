"""Building an experiment from its config: mesh, data, model, initial state, compiled steps,
checkpoint manager. `loop.run` builds one and runs the loop over it.

Two seams shape the build:
- the **objective** (`jaxscale.objectives`): what the step optimises, by name;
- the **initial state**: the workdir's own newest checkpoint (resume) if it has one, else another
  run's parameters (`config.init_from`, partial restore with a report), else a fresh init.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath
from flax import nnx

from jaxscale import objectives
from jaxscale.checkpoint import checkpointing, hf, init_from
from jaxscale.compress import distill, pruning, quantize
from jaxscale.config import input_errors, validation, workdir as workdir_lib
from jaxscale.core import param_paths, paths, sharding
from jaxscale.metrics import flops, memory
from jaxscale.models import lora
from jaxscale.models.build import model_for
from jaxscale.train import checks, optim, steps


def create_train_state(config, mesh, optimizer, before_init=None):
  """(graphdef, state, state_shardings), with every array created directly in its sharding.

  `before_init(graphdef, abstract_state)`, if given, sees the shapes and shardings before any
  array is allocated (the memory check).
  """

  def init():
    model = model_for(config)
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             model_state=model_state, opt_state=optimizer.init(params),
                             skipped_updates=jnp.zeros((), jnp.int32))
    return graphdef, state

  graphdef, abstract_state = nnx.eval_shape(init)
  state_shardings = sharding.state_shardings(abstract_state, mesh, config.mesh.rules)
  if before_init is not None:
    before_init(graphdef, sharding.abstract_arrays(abstract_state, state_shardings))
  state = jax.jit(lambda: init()[1], out_shardings=state_shardings)()
  return graphdef, state, state_shardings


def resolve_config(config, datasets) -> ml_collections.ConfigDict:
  """Fills in what the data decides (vocabulary size, classes, image size, eval split), so
  config.json is the whole experiment."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.lora.rank:
    # Adapters (and whatever init_from re-initialises, e.g. a new head) train; the rest is frozen.
    reinit = tuple(p for p in config.init_from.reinit if p != lora.ADAPTER_NAME.pattern)
    config.optimizer.frozen = _with(config.optimizer.frozen, lora.NOT_AN_ADAPTER)
    config.optimizer.trainable = _with(config.optimizer.trainable, *reinit)
    config.init_from.reinit = _with(config.init_from.reinit, lora.ADAPTER_NAME.pattern)
  if 'num_classes' in config.model and not config.model.num_classes and datasets.num_classes:
    config.model.num_classes = datasets.num_classes
  if datasets.eval_split:
    config.dataset.eval_split = datasets.eval_split
  if 'image_size' in config.model and not config.model.image_size:
    config.model.image_size = config.dataset.image_size
  if 'vocab_size' in config.model:
    if not config.model.vocab_size:
      config.model.vocab_size = datasets.vocab_size
    elif config.model.vocab_size < datasets.vocab_size:
      raise validation.ConfigError(
          f'config.model.vocab_size={config.model.vocab_size} is smaller than the dataset '
          f'{config.dataset.name!r} vocabulary ({datasets.vocab_size}); set it to 0 to match.')
  return config


def _with(patterns, *more) -> tuple:
  return tuple(patterns) + tuple(p for p in more if p not in patterns)


@dataclasses.dataclass
class Experiment:
  """Everything the loop needs, built and compiled; nothing trained yet."""
  config: ml_collections.ConfigDict  # Resolved (what config.json records).
  workdir: epath.Path
  mesh: jax.sharding.Mesh
  datasets: Any                      # data.Datasets
  graphdef: Any
  state: steps.TrainState            # The initial state: resumed, transferred or fresh.
  state_shardings: Any
  batch_sharding: jax.sharding.NamedSharding
  train_step: Any                    # Compiled.
  eval_step: Any
  manager: Any                       # orbax CheckpointManager
  saver: checkpointing.Saver
  train_iter: Any                    # At the position of the restored checkpoint.
  resumed: bool                      # From this workdir's own checkpoint.
  size: flops.Accounting
  flops_per_step: float              # Model FLOPs: the analytic count (metrics.flops), all runs.
  param_counts: dict[str, int]       # params_trainable, params_frozen.
  teacher: distill.Teacher | None = None  # config.distill: passed into each train step.
  flops_per_step_xla: float | None = None  # XLA's cost analysis of the compiled step, beside it.


def _abstract_batch(config, datasets, batch_sharding):
  return {k: jax.ShapeDtypeStruct((config.batch_size, *spec.shape[1:]),
                                  spec.dtype.as_numpy_dtype, sharding=batch_sharding)
          for k, spec in datasets.train.element_spec.items()}


def _is_trainable(flag) -> bool:
  """A leaf of the trainable mask: a bool, or a Variable holding one."""
  return bool(flag.get_value() if isinstance(flag, nnx.Variable) else flag)


def _param_counts(params, trainable) -> dict[str, int]:
  sizes = {name: leaf.size for name, leaf in param_paths.named_leaves(params).items()}
  flags = {name: _is_trainable(flag) for name, flag in param_paths.named_leaves(trainable).items()}
  trainable_count = sum(size for name, size in sizes.items() if flags[name])
  return {'params_trainable': trainable_count,
          'params_frozen': sum(sizes.values()) - trainable_count}


def _checkpointed_fields(initial_state, trainable):
  """(to_checkpoint, from_checkpoint): frozen parameters never change, so checkpoints leave them
  out (a LoRA or frozen-backbone checkpoint holds what training changed); a restore takes them
  from the initial state, which re-derives them the same way each start (init_from or the seed).
  """
  frozen = {name for name, flag in param_paths.named_leaves(trainable).items()
            if not _is_trainable(flag)}
  if not frozen:
    return (lambda state: state), (lambda state: state)

  def is_frozen(path, _):
    return param_paths.path_name(path) in frozen

  frozen_params = initial_state.params.filter(is_frozen)
  to_checkpoint = lambda state: state.replace(params=state.params.filter(nnx.Not(is_frozen)))
  from_checkpoint = lambda state: state.replace(
      params=nnx.merge_state(frozen_params, state.params))
  return to_checkpoint, from_checkpoint


def build(config: ml_collections.ConfigDict, workdir) -> Experiment:
  """The run of `config` in `workdir`, ready to train: checked, built, compiled and restored.

  Nothing is written to the workdir until the config, the data, a teacher, an init_from source
  and the memory estimate are known good.
  """
  if config.init_from.hf:  # The model is the checkpoint's: derived (or refused) before any check.
    config = hf.derive_config(ml_collections.ConfigDict(config.to_dict()))
    hf.check_seq_len(config)
  checks.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
  workdir = paths.resolve(workdir)
  mesh = sharding.make_mesh(config.mesh)
  datasets = _datasets(config)
  config = resolve_config(config, datasets)
  objective, teacher = _objective(config, workdir, datasets.task, mesh)
  optimizer, learning_rate_fn, param_metrics = _optimizer(config)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  abstract_batch = _abstract_batch(config, datasets, batch_sharding)
  steps_ = {}

  def compile_train(graphdef, abstract_state):
    """The train step compiled ahead from the abstract state (before any array exists), so the
    memory check can use XLA's figure and the first speed report is not the compile time."""
    state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    trainable = param_paths.trainable_mask(abstract_state.params, config.optimizer)
    train_step, steps_['eval'] = steps.compile_steps(
        graphdef, optimizer, learning_rate_fn, state_shardings, batch_sharding,
        sharding.replicated(mesh), config.optimizer.grad_accum_steps, objective=objective,
        skip_nonfinite=config.nonfinite_policy == 'skip', seed=config.seed,
        trainable=trainable, teacher_shardings=teacher and teacher.shardings,
        param_metrics=param_metrics,
        activation_rules=sharding.activation_rules(mesh, config.mesh))
    steps_['train'] = _compile_ahead(train_step, abstract_state, abstract_batch, teacher)
    return steps_['train']

  init = _initial_state(config, workdir, mesh, optimizer, objective, abstract_batch,
                        compile_train)
  train_step, eval_step = steps_['train'], steps_['eval']
  abstract_state = sharding.abstract_arrays(init.state, init.shardings)
  train_iter = iter(datasets.train)
  manager = checkpointing.make_manager(workdir, config)
  to_checkpoint, from_checkpoint = _checkpointed_fields(init.state, init.trainable)
  restored, last_checkpoint = checkpointing.restore_latest(
      manager, to_checkpoint(abstract_state), train_iter)
  state = init.state
  if restored is not None:
    state = from_checkpoint(restored)
    logging.info('Resumed from checkpoint at step %d.', last_checkpoint)
  elif init.own_checkpoint:
    logging.info('No finished checkpoint in %s: starting from step 0.', workdir / 'checkpoints')
  size, param_counts, flops_per_step = _accounting(config, state.params, init.trainable,
                                                   teacher)
  if teacher is not None:  # The teacher's variables go into each step.
    compiled_step = train_step
    train_step = lambda state, batch: compiled_step(state, batch, teacher.variables)
  return Experiment(
      config=config, workdir=workdir, mesh=mesh, datasets=datasets, graphdef=init.graphdef,
      state=state, state_shardings=init.shardings, batch_sharding=batch_sharding,
      train_step=train_step, eval_step=eval_step, manager=manager,
      saver=checkpointing.Saver(manager, to_checkpoint), train_iter=train_iter,
      resumed=restored is not None, size=size, flops_per_step=flops_per_step,
      param_counts=param_counts, teacher=teacher,
      flops_per_step_xla=flops.compiled_flops(steps_['train']))


def _datasets(config):
  from jaxscale import data as data_lib  # TensorFlow loads here, after the config is known good.
  with input_errors.explained(config.dataset):
    return data_lib.get_datasets(
        config.dataset, local_batch_size=config.batch_size // jax.process_count(),
        num_eval_batches=config.num_eval_batches, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())


def _objective(config, workdir, task: str, mesh):
  """(objective, teacher): the config's objective, fake-quantized and distilled where asked."""
  objective_name = objectives.name_for(config, task)
  objective = objectives.make(objective_name, config)
  if config.quantization.mode == 'qat':  # Fake-quantized forward, straight-through backward.
    objective = quantize.qat_objective(objective, config.quantization)
  teacher = None
  if config.distill.teacher_workdir:  # Before the workdir is touched: a bad teacher writes nothing.
    teacher = distill.load_teacher(config, workdir, objective_name, mesh)
    objective = distill.objective(objective, teacher.graphdef, config.distill)
    logging.info('Distilling from %s (step %d).', teacher.workdir, teacher.step)
  return objective, teacher


def _optimizer(config):
  """(optimizer, learning_rate_fn, param_metrics): pruning wraps the optimizer and logs sparsity."""
  optimizer, learning_rate_fn = optim.make_optimizer(config.optimizer, config.num_train_steps,
                                                     config.model)
  param_metrics = None
  if config.pruning.sparsity:
    optimizer = pruning.wrap(optimizer, config.pruning, config.optimizer)
    param_metrics = pruning.sparsity_metrics(config.pruning, config.optimizer)
  return optimizer, learning_rate_fn, param_metrics


@dataclasses.dataclass
class InitialState:
  graphdef: Any
  state: steps.TrainState
  shardings: Any
  trainable: Any          # The optimizer's mask: True for the parameters it updates.
  own_checkpoint: bool    # The workdir holds checkpoints of its own (a resume).
  memory_estimate: Any    # memory.Estimate, with XLA's figure for the compiled step.


def _initial_state(config, workdir, mesh, optimizer, objective, abstract_batch,
                   compile_train) -> InitialState:
  """A fresh state (after the memory check), with another run's parameters where
  `config.init_from` asks; then the workdir gets the resolved config. `compile_train(graphdef,
  abstract_state)` compiles the train step before any array is allocated."""
  memory_estimate = None

  def check_memory(graphdef, abstract_state):
    nonlocal memory_estimate
    param_paths.check_patterns(config.optimizer.frozen,
                               param_paths.named_leaves(abstract_state.params),
                               'config.optimizer.frozen')
    forward = lambda p, ms, b: steps.loss_sums(graphdef, p, ms, b, objective=objective,
                                               train=True)
    memory_estimate = memory.estimate(config, abstract_state, abstract_batch, forward)
    memory.check(config, memory_estimate, state_only=True)  # Exact: no compile needed to refuse.
    memory_estimate = memory.with_compiled(memory_estimate,
                                           compile_train(graphdef, abstract_state))
    memory.check(config, memory_estimate)  # XLA's figure where the backend gives one.

  # Nothing is allocated or written to the workdir until the config is known to fit.
  graphdef, state, state_shardings = create_train_state(config, mesh, optimizer,
                                                        before_init=check_memory)
  trainable = param_paths.trainable_mask(state.params, config.optimizer)
  has_frozen = not all(jax.tree.leaves(trainable))
  own_checkpoint = checkpointing.has_checkpoints(workdir)
  report = None
  # A resumed run still takes its frozen parameters from the source: checkpoints leave them out.
  if config.init_from.workdir and (not own_checkpoint or has_frozen):
    # Before the workdir is touched: a mismatched source fails with nothing written.
    params, report = init_from.restore_params(config.init_from, state.params)
    state = state.replace(params=params)
  elif config.init_from.hf and (not own_checkpoint or has_frozen):
    params, report = hf.restore_params(config.init_from, state.params)
    state = state.replace(params=params)
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.record_config(workdir, config)
  if report is not None and not own_checkpoint:
    init_from.log_and_write(report, workdir)
  return InitialState(graphdef, state, state_shardings, trainable, own_checkpoint,
                      memory_estimate)


def _compile_ahead(train_step, abstract_state, abstract_batch, teacher):
  """Compiled before the loop, so the first speed report is not the compile time."""
  abstract_teacher = () if teacher is None else (
      sharding.abstract_arrays(teacher.variables, teacher.shardings),)
  compile_start = time.perf_counter()
  compiled = train_step.lower(abstract_state, abstract_batch, *abstract_teacher).compile()
  logging.info('Compiled the train step in %.1f s.', time.perf_counter() - compile_start)
  return compiled


def _accounting(config, params, trainable, teacher):
  """(size, param_counts, flops_per_step) for the run record: model FLOPs by the one analytic
  convention (metrics.flops), frozen parameters and LoRA adapters included."""
  size = flops.accounting(config)
  param_counts = _param_counts(params, trainable)
  flops_per_step = config.batch_size * flops.train_flops_per_example(config, size)
  if teacher is not None:  # Its forward pass, in the same step.
    flops_per_step += config.batch_size * teacher.forward_flops_per_example
  logging.info('Parameters: %s trainable, %s frozen.', f'{param_counts["params_trainable"]:,}',
               f'{param_counts["params_frozen"]:,}')
  return size, param_counts, flops_per_step
