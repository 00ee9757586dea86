"""A classifier's forward as a TensorFlow SavedModel (for TF Serving), through orbax-export.

The SavedModel holds the parameters as variables and the forward as a jax2tf-converted function
with a polymorphic batch dimension; its `serving_default` signature maps `inputs` to `logits`.
"""

import tensorflow as tf
from orbax.export import ExportManager, JaxModule, ServingConfig


def save(forward, params: dict, input_spec, directory) -> None:
  """Writes `forward(params, inputs) -> logits` with `params` baked in to `directory`."""
  polymorphic = 'b, ' + ', '.join(str(d) for d in input_spec.shape[1:])
  module = JaxModule(params, forward, trainable=False, input_polymorphic_shape=polymorphic)
  signature = [tf.TensorSpec((None, *input_spec.shape[1:]), tf.as_dtype(input_spec.dtype),
                             name='inputs')]
  serving = ServingConfig('serving_default', input_signature=signature,
                          tf_postprocessor=lambda logits: {'logits': logits})
  ExportManager(module, [serving]).save(str(directory))
