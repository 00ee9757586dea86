"""Pure train and eval steps over `TrainState` pytrees.

`train_step(state, batch) -> (state, metrics)` has no side effects: the model graph, optimizer
and schedule are bound with `functools.partial` before `jax.jit`, so the compiled function sees
only arrays. Metrics come out of the step itself (loss, norms, learning rate) and stay on device
until the loop reads them at a logging step.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxscale import objectives
from jaxscale.core import sharding
from jaxscale.models import lora


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State        # nnx.Param variables: what the optimizer updates.
  model_state: nnx.State   # Other model variables (e.g. batch-norm statistics); empty for LMs.
  opt_state: optax.OptState
  skipped_updates: jax.Array  # Updates dropped for a non-finite loss or gradient (cumulative).


def loss_sums(graphdef, params, model_state, batch, *, objective, train: bool, rng=None,
              teacher=None):
  """Summed losses (and the objective's metrics) over the batch, and the new model state.

  `objective` is a `sums` function from `jaxscale.objectives` (or a registered name, for its
  defaults). The model runs in train mode (batch norm uses and updates batch statistics,
  dropout is on) or eval mode (running statistics, left unchanged). `teacher` (arrays a
  distillation objective reads, never differentiated) is passed on to the objective if given.
  """
  if isinstance(objective, str):
    objective = objectives.make(objective)
  # copy=True: fresh Variables in this trace, so batch norm may update its statistics under grad.
  model = nnx.merge(graphdef, params, model_state, copy=True)
  if train:
    model.train()
  else:
    model.eval()
  if rng is None:
    rng = jax.random.key(0)
  if lora.has_adapters(model):  # W + (alpha / rank) A B, on this trace's copy of the model.
    lora.prepare(model, rng, train)
  extra = {} if teacher is None else {'teacher': teacher}
  sums = objective(model, batch, train=train, rng=rng, **extra)
  return sums, nnx.state(model, nnx.Not(nnx.Param))


def _loss_with_aux(params, model_state, batch, rng, teacher, graphdef, objective):
  sums, new_model_state = loss_sums(graphdef, params, model_state, batch, objective=objective,
                                    train=True, rng=rng, teacher=teacher)
  return sums['loss_sum'], (sums, new_model_state)


def _summed_grads(graphdef, params, model_state, batch, rng, grad_accum_steps: int, objective,
                  teacher=None):
  """Gradient of the summed loss, over `grad_accum_steps` sequential micro-batches."""
  grad_fn = jax.value_and_grad(
      functools.partial(_loss_with_aux, graphdef=graphdef, objective=objective), has_aux=True)
  if grad_accum_steps == 1:
    (_, (sums, model_state)), grads = grad_fn(params, model_state, batch, rng, teacher)
    return sums, model_state, grads

  micro_batches = jax.tree.map(
      lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]), batch)
  micro_rngs = jax.random.split(rng, grad_accum_steps)

  def accumulate(carry, micro):
    sums, model_state, grads = carry
    micro_batch, micro_rng = micro
    (_, (s, model_state)), g = grad_fn(params, model_state, micro_batch, micro_rng, teacher)
    return (jax.tree.map(jnp.add, sums, s), model_state, jax.tree.map(jnp.add, grads, g)), None

  first_micro_batch = jax.tree.map(lambda x: x[0], micro_batches)
  sums_shape = jax.eval_shape(grad_fn, params, model_state, first_micro_batch, rng,
                              teacher)[0][1][0]
  zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
  init = (zero_sums, model_state, jax.tree.map(jnp.zeros_like, params))
  (sums, model_state, grads), _ = jax.lax.scan(accumulate, init, (micro_batches, micro_rngs))
  return sums, model_state, grads


def _is_step_count(path) -> bool:
  """Optax keeps its step counters (schedules, Adam's bias correction) in fields named `count`."""
  return bool(path) and getattr(path[-1], 'name', None) == 'count'


def keep_old_if_nonfinite(old: TrainState, new: TrainState, loss, grad_norm) -> TrainState:
  """`new`, or `old`'s params, model state and optimizer moments when the loss or gradient norm is
  not finite; the step counter and the optimizer's own step counts advance either way (so the data
  and schedule move on, and the logged learning rate is the one the next update applies) and the
  drop is counted. A select, not a branch: both sides already exist and it keeps the step one
  program."""
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda n, o: jnp.where(finite, n, o)
  params, model_state = jax.tree.map(keep, (new.params, new.model_state),
                                     (old.params, old.model_state))
  opt_state = jax.tree_util.tree_map_with_path(
      lambda path, n, o: n if _is_step_count(path) else keep(n, o), new.opt_state, old.opt_state)
  return new.replace(params=params, model_state=model_state, opt_state=opt_state,
                     skipped_updates=old.skipped_updates + jnp.where(finite, 0, 1))


def train_step(state: TrainState, batch, teacher=None, *, graphdef,
               optimizer: optax.GradientTransformation, learning_rate_fn, objective='lm',
               grad_accum_steps: int = 1, skip_nonfinite: bool = False, seed: int = 0,
               trainable=None, param_metrics=None):
  """One update. `trainable` (a tree of bools like the params, or None for all) picks the
  parameters whose gradient norm is reported; the optimizer itself leaves frozen ones alone.

  `teacher` goes to the objective (distillation). Extra scalars to log go under
  metrics['logged']: the objective's `logged_sums` as `train_<name>` means over the batch, and
  `param_metrics(new_params)` (e.g. sparsity) as they are."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  sums, model_state, grads = _summed_grads(
      graphdef, state.params, state.model_state, batch, rng, grad_accum_steps, objective,
      teacher)
  # Mean over all targets of the global batch, however it was split.
  weight_sum = sums['weight_sum']
  grads = jax.tree.map(lambda g: g / weight_sum, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Frozen parameters' gradients are left out of the norm, so XLA never computes them.
  reported = grads if trainable is None else jax.tree.map(
      lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable)
  metrics = {
      'train_loss': sums['loss_sum'] / weight_sum,
      'grad_norm': optax.tree.norm(reported),
      'param_norm': optax.tree.norm(params),
      'update_norm': optax.tree.norm(updates),
      'learning_rate': learning_rate_fn(state.step),
  }
  if 'top1_sum' in sums:
    metrics['train_accuracy'] = sums['top1_sum'] / weight_sum
  logged = {f'train_{name}': total / weight_sum
            for name, total in sums.get('logged_sums', {}).items()}
  if param_metrics is not None:
    logged.update(param_metrics(params))
  if logged:
    metrics['logged'] = logged
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  if skip_nonfinite:
    new_state = keep_old_if_nonfinite(state, new_state, metrics['train_loss'], metrics['grad_norm'])
  metrics['skipped_updates'] = new_state.skipped_updates
  return new_state, metrics


def eval_step(state: TrainState, batch, *, graphdef, objective='lm', seed: int = 0):
  """Summed loss, target count and the objective's metrics; the loop divides after summing the
  eval set. The rng is fixed, so randomised objectives (masking) see the same eval set each time."""
  rng = jax.random.fold_in(jax.random.key(seed), jnp.iinfo(jnp.int32).max)
  sums, _ = loss_sums(graphdef, state.params, state.model_state, batch, objective=objective,
                      train=False, rng=rng)
  return sums


def compile_steps(graphdef, optimizer, learning_rate_fn, state_shardings, batch_sharding,
                  replicated, grad_accum_steps: int = 1, objective='lm',
                  skip_nonfinite: bool = False, seed: int = 0, trainable=None,
                  teacher_shardings=None, param_metrics=None,
                  activation_rules: sharding.ActivationRules | None = None):
  """jit-compiled (train_step, eval_step) with explicit shardings and the state donated.

  With `teacher_shardings` the train step takes a third argument, the teacher's arrays laid out
  by them (read, never donated nor returned). `activation_rules` (`sharding.activation_rules`)
  pin the model's activations by logical axis names while the steps are traced."""
  if isinstance(objective, str):
    objective = objectives.make(objective)
  train = jax.jit(
      sharding.traced_with(functools.partial(
          train_step, graphdef=graphdef, optimizer=optimizer, learning_rate_fn=learning_rate_fn,
          grad_accum_steps=grad_accum_steps, objective=objective, skip_nonfinite=skip_nonfinite,
          seed=seed, trainable=trainable, param_metrics=param_metrics), activation_rules),
      in_shardings=(state_shardings, batch_sharding) + (
          () if teacher_shardings is None else (teacher_shardings,)),
      out_shardings=(state_shardings, replicated),
      donate_argnames=('state',))
  evaluate = jax.jit(
      sharding.traced_with(functools.partial(
          eval_step, graphdef=graphdef, objective=objective, seed=seed), activation_rules),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=replicated)
  return train, evaluate
