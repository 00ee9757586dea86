"""Next-token prediction: cross-entropy on every weighted target."""

import jax.numpy as jnp
import optax

from jaxscale.objectives.registry import OBJECTIVES


def token_sums(logits_BxLxV, targets_BxL, weights_BxL) -> dict:
  """Summed cross-entropy and correct predictions over weighted targets."""
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  correct_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
  return {'loss_sum': jnp.sum(losses_BxL * weights_BxL), 'weight_sum': jnp.sum(weights_BxL),
          'top1_sum': jnp.sum(correct_BxL * weights_BxL)}


@OBJECTIVES.register('lm')
def lm(config=None):
  del config

  def sums(model, batch, *, train: bool, rng):
    del train, rng
    result = token_sums(model(batch['inputs']), batch['targets'], batch['weights'])
    del result['top1_sum']  # Next-token accuracy is not a number LM studies report.
    return result

  return sums
