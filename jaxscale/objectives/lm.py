"""Next-token prediction: cross-entropy on every weighted target."""

import jax.numpy as jnp
import optax

from jaxscale.objectives.registry import OBJECTIVES


def token_sums(logits_BxLxV, targets_BxL, weights_BxL) -> dict:
  """Summed cross-entropy and correct predictions over weighted targets, and each row's sums
  (`per_example`, [B]: what the eval loss's standard error is computed from)."""
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  correct_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
  row_losses_B = jnp.sum(losses_BxL * weights_BxL, axis=-1)
  row_weights_B = jnp.sum(weights_BxL, axis=-1)
  return {'loss_sum': jnp.sum(losses_BxL * weights_BxL), 'weight_sum': jnp.sum(weights_BxL),
          'top1_sum': jnp.sum(correct_BxL * weights_BxL),
          'per_example': {'loss_sum': row_losses_B, 'weight_sum': row_weights_B}}


@OBJECTIVES.register('lm')
def lm(config=None):
  del config

  def sums(model, batch, *, train: bool, rng):
    del train, rng
    result = token_sums(model(batch['inputs']), batch['targets'], batch['weights'])
    del result['top1_sum']  # Next-token accuracy is not a number LM studies report.
    return result

  return sums
