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


def token_losses(graphdef, params, model_state, batch):
  """Summed cross-entropy over weighted target tokens, the weight total, and new model state."""
  model = nnx.merge(graphdef, params, model_state)
  logits_BxLxV = model(batch['inputs'])
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch['targets'])
  weights_BxL = batch['weights']
  new_model_state = nnx.state(model, nnx.Not(nnx.Param))
  return jnp.sum(losses_BxL * weights_BxL), jnp.sum(weights_BxL), new_model_state


def _loss_with_aux(params, model_state, batch, graphdef):
  loss_sum, weight_sum, new_model_state = token_losses(graphdef, params, model_state, batch)
  return loss_sum, (weight_sum, new_model_state)


def _summed_grads(graphdef, params, model_state, batch, grad_accum_steps: int):
  """Gradient of the summed loss, over `grad_accum_steps` sequential micro-batches."""
  grad_fn = jax.value_and_grad(functools.partial(_loss_with_aux, graphdef=graphdef), has_aux=True)
  if grad_accum_steps == 1:
    (loss_sum, (weight_sum, model_state)), grads = grad_fn(params, model_state, batch)
    return loss_sum, weight_sum, model_state, grads

  micro_batches = jax.tree.map(
      lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]), batch)

  def accumulate(carry, micro_batch):
    loss_sum, weight_sum, model_state, grads = carry
    (l, (w, model_state)), g = grad_fn(params, model_state, micro_batch)
    return (loss_sum + l, weight_sum + w, model_state, jax.tree.map(jnp.add, grads, g)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), model_state, zeros)
  (loss_sum, weight_sum, model_state, grads), _ = jax.lax.scan(accumulate, init, micro_batches)
  return loss_sum, weight_sum, model_state, grads


def train_step(state: TrainState, batch, *, graphdef, optimizer: optax.GradientTransformation,
               learning_rate_fn, grad_accum_steps: int = 1):
  loss_sum, weight_sum, model_state, grads = _summed_grads(
      graphdef, state.params, state.model_state, batch, grad_accum_steps)
  # Mean over all target tokens of the global batch, however it was split.
  grads = jax.tree.map(lambda g: g / weight_sum, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      'train_loss': loss_sum / weight_sum,
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(params),
      'update_norm': optax.tree.norm(updates),
      'learning_rate': learning_rate_fn(state.step),
  }
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch, *, graphdef):
  """Summed loss and token count; the loop divides after summing over the eval set."""
  loss_sum, weight_sum, _ = token_losses(graphdef, state.params, state.model_state, batch)
  return {'loss_sum': loss_sum, 'weight_sum': weight_sum}


def compile_steps(graphdef, optimizer, learning_rate_fn, state_shardings, batch_sharding,
                  replicated, grad_accum_steps: int = 1):
  """jit-compiled (train_step, eval_step) with explicit shardings and the state donated."""
  train = jax.jit(
      functools.partial(train_step, graphdef=graphdef, optimizer=optimizer,
                        learning_rate_fn=learning_rate_fn, grad_accum_steps=grad_accum_steps),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated),
      donate_argnames=('state',))
  evaluate = jax.jit(
      functools.partial(eval_step, graphdef=graphdef),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=replicated)
  return train, evaluate
