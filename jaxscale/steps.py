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


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State        # nnx.Param variables: what the optimizer updates.
  model_state: nnx.State   # Other model variables (e.g. batch-norm statistics); empty for LMs.
  opt_state: optax.OptState
  skipped_updates: jax.Array  # Updates dropped for a non-finite loss or gradient (cumulative).


def _lm_sums(logits_BxLxV, batch, *, train: bool, label_smoothing: float):
  del train, label_smoothing
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch['targets'])
  weights_BxL = batch['weights']
  return {'loss_sum': jnp.sum(losses_BxL * weights_BxL), 'weight_sum': jnp.sum(weights_BxL)}


def _classification_sums(logits_BxK, batch, *, train: bool, label_smoothing: float):
  """Cross-entropy against (possibly mixed) soft labels, and top-1/top-5 hits on the true class.

  `labels` is [B, K]: one-hot in eval, mixup/cutmix mixtures in training; the "true" class of a
  mixture is its largest component. Smoothing applies to the training loss only, so eval loss is
  the plain cross-entropy a scaling fit needs.
  """
  labels_BxK, weights_B = batch['labels'], batch['weights']
  targets_BxK = optax.smooth_labels(labels_BxK, label_smoothing) if train else labels_BxK
  losses_B = optax.softmax_cross_entropy(logits_BxK.astype(jnp.float32), targets_BxK)
  true_logit_B = jnp.take_along_axis(
      logits_BxK, jnp.argmax(labels_BxK, axis=-1)[:, None], axis=-1)[:, 0]
  rank_B = jnp.sum(logits_BxK > true_logit_B[:, None], axis=-1)  # 0 = the true class is on top.
  return {'loss_sum': jnp.sum(losses_B * weights_B), 'weight_sum': jnp.sum(weights_B),
          'top1_sum': jnp.sum((rank_B < 1) * weights_B),
          'top5_sum': jnp.sum((rank_B < 5) * weights_B)}


# Task -> (the batch key the model reads, the loss sums of its output).
_TASKS = {'lm': ('inputs', _lm_sums), 'classification': ('image', _classification_sums)}


def loss_sums(graphdef, params, model_state, batch, *, task: str, train: bool,
              label_smoothing: float = 0.0):
  """Summed losses (and task metrics) over the batch's weighted targets, and new model state.

  The model runs in train mode (batch norm uses and updates batch statistics) or eval mode
  (running statistics, left unchanged).
  """
  # copy=True: fresh Variables in this trace, so batch norm may update its statistics under grad.
  model = nnx.merge(graphdef, params, model_state, copy=True)
  if train:
    model.train()
  else:
    model.eval()
  input_key, task_sums = _TASKS[task]
  sums = task_sums(model(batch[input_key]), batch, train=train, label_smoothing=label_smoothing)
  return sums, nnx.state(model, nnx.Not(nnx.Param))


def _loss_with_aux(params, model_state, batch, graphdef, task, label_smoothing):
  sums, new_model_state = loss_sums(graphdef, params, model_state, batch, task=task, train=True,
                                    label_smoothing=label_smoothing)
  return sums['loss_sum'], (sums, new_model_state)


def _summed_grads(graphdef, params, model_state, batch, grad_accum_steps: int, task: str,
                  label_smoothing: float):
  """Gradient of the summed loss, over `grad_accum_steps` sequential micro-batches."""
  grad_fn = jax.value_and_grad(
      functools.partial(_loss_with_aux, graphdef=graphdef, task=task,
                        label_smoothing=label_smoothing), has_aux=True)
  if grad_accum_steps == 1:
    (_, (sums, model_state)), grads = grad_fn(params, model_state, batch)
    return sums, model_state, grads

  micro_batches = jax.tree.map(
      lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]), batch)

  def accumulate(carry, micro_batch):
    sums, model_state, grads = carry
    (_, (s, model_state)), g = grad_fn(params, model_state, micro_batch)
    return (jax.tree.map(jnp.add, sums, s), model_state, jax.tree.map(jnp.add, grads, g)), None

  first_micro_batch = jax.tree.map(lambda x: x[0], micro_batches)
  sums_shape = jax.eval_shape(grad_fn, params, model_state, first_micro_batch)[0][1][0]
  zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
  init = (zero_sums, model_state, jax.tree.map(jnp.zeros_like, params))
  (sums, model_state, grads), _ = jax.lax.scan(accumulate, init, micro_batches)
  return sums, model_state, grads


def keep_old_if_nonfinite(old: TrainState, new: TrainState, loss, grad_norm) -> TrainState:
  """`new`, or `old`'s params, model and optimizer state when the loss or gradient norm is not
  finite; the step counter advances either way (so the data and schedule move on) and the drop is
  counted. A select, not a branch: both sides already exist and it keeps the step one program."""
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                      (new.params, new.model_state, new.opt_state),
                      (old.params, old.model_state, old.opt_state))
  return new.replace(params=kept[0], model_state=kept[1], opt_state=kept[2],
                     skipped_updates=old.skipped_updates + jnp.where(finite, 0, 1))


def train_step(state: TrainState, batch, *, graphdef, optimizer: optax.GradientTransformation,
               learning_rate_fn, grad_accum_steps: int = 1, task: str = 'lm',
               label_smoothing: float = 0.0, skip_nonfinite: bool = False):
  sums, model_state, grads = _summed_grads(
      graphdef, state.params, state.model_state, batch, grad_accum_steps, task, label_smoothing)
  # Mean over all targets of the global batch, however it was split.
  weight_sum = sums['weight_sum']
  grads = jax.tree.map(lambda g: g / weight_sum, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      'train_loss': sums['loss_sum'] / weight_sum,
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(params),
      'update_norm': optax.tree.norm(updates),
      'learning_rate': learning_rate_fn(state.step),
  }
  if 'top1_sum' in sums:
    metrics['train_accuracy'] = sums['top1_sum'] / weight_sum
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  if skip_nonfinite:
    new_state = keep_old_if_nonfinite(state, new_state, metrics['train_loss'], metrics['grad_norm'])
  metrics['skipped_updates'] = new_state.skipped_updates
  return new_state, metrics


def eval_step(state: TrainState, batch, *, graphdef, task: str = 'lm'):
  """Summed loss, target count and task metrics; the loop divides after summing the eval set."""
  sums, _ = loss_sums(graphdef, state.params, state.model_state, batch, task=task, train=False)
  return sums


def compile_steps(graphdef, optimizer, learning_rate_fn, state_shardings, batch_sharding,
                  replicated, grad_accum_steps: int = 1, task: str = 'lm',
                  label_smoothing: float = 0.0, skip_nonfinite: bool = False):
  """jit-compiled (train_step, eval_step) with explicit shardings and the state donated."""
  train = jax.jit(
      functools.partial(train_step, graphdef=graphdef, optimizer=optimizer,
                        learning_rate_fn=learning_rate_fn, grad_accum_steps=grad_accum_steps,
                        task=task, label_smoothing=label_smoothing,
                        skip_nonfinite=skip_nonfinite),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated),
      donate_argnames=('state',))
  evaluate = jax.jit(
      functools.partial(eval_step, graphdef=graphdef, task=task),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=replicated)
  return train, evaluate
