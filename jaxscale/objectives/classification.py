"""Classification of images or token sequences against (possibly mixed) soft labels."""

import jax
import jax.numpy as jnp
import optax

from jaxscale.objectives.registry import OBJECTIVES


def model_inputs(batch) -> tuple:
  """The model's arguments: an image, or tokens with their padding mask where there is one."""
  if 'image' in batch:
    return (batch['image'],)
  if 'input_mask' in batch:
    return batch['inputs'], batch['input_mask']
  return (batch['inputs'],)


def class_sums(logits_BxK, labels_BxK, weights_B, *, label_smoothing: float = 0.0,
               with_confusion: bool = False) -> dict:
  """Cross-entropy against soft labels, top-1/top-5 hits on the true class and, optionally, the
  weighted confusion matrix [true, predicted].

  The "true" class of a mixup/cutmix mixture is its largest component. One rule ranks the classes
  for accuracy and for the confusion matrix: argmax's, where among tied logits the lowest class
  index wins. So a top-1 hit is exactly a diagonal entry of the confusion matrix, and constant
  logits (an untrained zero head) predict class 0.
  """
  targets_BxK = optax.smooth_labels(labels_BxK, label_smoothing) if label_smoothing else labels_BxK
  losses_B = optax.softmax_cross_entropy(logits_BxK.astype(jnp.float32), targets_BxK)
  true_B = jnp.argmax(labels_BxK, axis=-1)
  true_logit_B = jnp.take_along_axis(logits_BxK, true_B[:, None], axis=-1)[:, 0]
  # Classes ranked ahead of the true one: higher logits, and tied ones with a lower index (as
  # argmax breaks ties), so rank 0 is exactly argmax == true.
  classes_K = jnp.arange(logits_BxK.shape[-1])
  higher_BxK = logits_BxK > true_logit_B[:, None]
  tied_before_BxK = (logits_BxK == true_logit_B[:, None]) & (classes_K[None, :] < true_B[:, None])
  rank_B = jnp.sum(higher_BxK | tied_before_BxK, axis=-1)
  result = {'loss_sum': jnp.sum(losses_B * weights_B), 'weight_sum': jnp.sum(weights_B),
            'top1_sum': jnp.sum((rank_B < 1) * weights_B),
            'top5_sum': jnp.sum((rank_B < 5) * weights_B),
            # Each example's terms, for the eval loss's standard error.
            'per_example': {'loss_sum': losses_B * weights_B, 'weight_sum': weights_B}}
  if with_confusion:
    num_classes = logits_BxK.shape[-1]
    true_BxK = jax.nn.one_hot(true_B, num_classes) * weights_B[:, None]
    predicted_BxK = jax.nn.one_hot(jnp.argmax(logits_BxK, axis=-1), num_classes)
    result['confusion'] = jnp.einsum('bt,bp->tp', true_BxK, predicted_BxK)
  return result


@OBJECTIVES.register('classification')
def classification(config=None):
  """Label smoothing applies to the training loss only, so eval loss is the plain cross-entropy a
  scaling fit needs; eval also accumulates the confusion matrix for the classification report."""
  label_smoothing = config.label_smoothing if config is not None else 0.0

  def sums(model, batch, *, train: bool, rng):
    del rng
    return class_sums(model(*model_inputs(batch)), batch['labels'], batch['weights'],
                      label_smoothing=label_smoothing if train else 0.0,
                      with_confusion=not train)

  return sums
