"""Quantization with Qwix: rules for our models, a quantization-aware objective for training, a
post-training-quantized objective for evaluation, and honest byte counts.

Qwix intercepts `jnp.einsum`, `jax.lax.dot_general` and `jax.lax.conv_general_dilated` inside a
model's `__call__` and, where a rule matches the calling module, quantizes the operands: a
parameter of the module (found by tracing the operand back to it) as a weight, per output
channel; anything else as an activation, per token. Our models reach those ops through
`models.layers.einsum_f32_accumulate` (MLP, transformer, ViT), `nnx.Linear` and `nnx.Conv`
(ResNet).

Both providers run inside the traced step, on the float parameters of the step's own copy of
the model: checkpoints hold float parameters only, and a quantized model is derived from them on
load (Qwix's quantized parameter layout may change between its versions).

- QAT (`qwix.QtProvider`): fake-quantized forward, straight-through backward.
- PTQ (`qwix.PtqProvider`): integer weights (and activations where asked: int8 x int8 matmuls;
  otherwise float matmuls on the integer weights, rescaled).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from jaxscale.config import validation
from jaxscale.core import param_paths

QTYPES = {'int8': jnp.int8, 'int4': jnp.int4}


@validation.register_check
def check_quantization(config):
  q = config.quantization
  validation.check_choice('config.quantization.mode', q.mode, ('none', 'qat'))
  validation.check_choice('config.quantization.weight_dtype', q.weight_dtype, tuple(QTYPES))
  validation.check_choice('config.quantization.act_dtype', q.act_dtype, ('int8', ''))
MATMULS = ('einsum', 'dot_general')
CONV = 'conv_general_dilated'


def rules(weights: str, activations: str = '', *, training: bool = False) -> list:
  """Qwix rules quantizing every matmul (and convolution) of the model.

  `weights`: 'int8' | 'int4', per output channel (absmax). `activations`: 'int8' (dynamic,
  per token) or '' to keep them float (weight-only). Qwix's PTQ convolutions need weights and
  activations of the same type, so weight-only PTQ leaves convolutions float (the result lists
  them under `float_weights`); QAT fake-quantizes them either way.
  """
  if weights not in QTYPES:
    raise ValueError(f'weights={weights!r}; choose one of {sorted(QTYPES)}.')
  if activations not in ('', 'int8'):
    raise ValueError(f"activations={activations!r}; choose 'int8' or '' (float activations).")
  act_qtype = QTYPES[activations] if activations else None
  ops = MATMULS
  if training or act_qtype == QTYPES[weights]:
    ops = (*MATMULS, CONV)
  rule_type = qwix.QtRule if training else qwix.QuantizationRule
  return [rule_type(module_path='.*', op_names=ops, weight_qtype=QTYPES[weights],
                    act_qtype=act_qtype)]


def _quantized_objective(objective, provider):
  """`objective` run on a Qwix-quantized copy of the step's model.

  The copy shares the step's arrays, so gradients reach the float parameters; its other
  variables (batch-norm statistics) are copied back, so the step sees their updates.
  """

  def sums(model, batch, *, train: bool, rng):
    # skip_nnx_init: the objective's own forward pass is the first call, so no extra forward.
    quantized = qwix.quantize_model(model, provider, skip_nnx_init=True)
    result = objective(quantized, batch, train=train, rng=rng)
    nnx.update(model, nnx.state(quantized, nnx.Not(nnx.Param)))
    return result

  return sums


def qat_objective(objective, quantization_config):
  """The train (and eval) objective of a run with `config.quantization.mode == 'qat'`."""
  provider = qwix.QtProvider(rules(quantization_config.weight_dtype,
                                   quantization_config.act_dtype, training=True))
  return _quantized_objective(objective, provider)


def ptq_objective(objective, weights: str, activations: str = ''):
  """`objective` evaluated on the post-training-quantized model."""
  return _quantized_objective(objective, qwix.PtqProvider(rules(weights, activations)))


# ---------------------------------------------------------------------------------------------
# Sizes.


def bits_per_element(dtype) -> int:
  """Storage bits of one element: 4 for int4, whose `nbytes` counts a whole byte."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.iinfo(dtype).bits
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.finfo(dtype).bits
  return dtype.itemsize * 8


def tree_bytes(tree) -> int:
  """Bytes to store every array of `tree` (arrays or ShapeDtypeStructs) at its dtype's width."""
  bits = sum(int(np.prod(leaf.shape)) * bits_per_element(leaf.dtype)
             for leaf in jax.tree.leaves(tree))
  return (bits + 7) // 8


def quantized_state(model, weights: str, activations: str, *model_inputs) -> nnx.State:
  """The abstract variables of `model` quantized by Qwix's PTQ: integer values and float scales
  (`<weight>.array.qvalue`, `.array.scale`) where a weight is quantized, the float arrays
  elsewhere. Shapes only: nothing is computed."""
  graphdef, state = nnx.split(model)

  def quantize(state, *inputs):
    # A fresh provider per call: Qwix's rule bookkeeping is per provider.
    provider = qwix.PtqProvider(rules(weights, activations))
    return nnx.state(qwix.quantize_model(nnx.merge(graphdef, state), provider, *inputs))

  return jax.eval_shape(quantize, state, *model_inputs)


QUANTIZED_VALUES = '.array.qvalue'  # A PTQ weight's integers: '<weight>.array.qvalue'.


def size_report(model, weights: str, activations: str, *model_inputs) -> dict[str, Any]:
  """`bytes` of the quantized model's variables (integer values and their scales), `float_bytes`
  of the float model's, `quantized_weights` (the names of weights stored as integers) and
  `float_weights` (weight matrices and kernels left float; biases are not counted as weights)."""
  quantized = quantized_state(model, weights, activations, *model_inputs)
  names = param_paths.named_leaves(nnx.state(quantized, nnx.Param))
  return {
      'bytes': tree_bytes(quantized),
      'float_bytes': tree_bytes(nnx.state(model)),
      'quantized_weights': sorted(name.removesuffix(QUANTIZED_VALUES) for name in names
                                  if name.endswith(QUANTIZED_VALUES)),
      'float_weights': sorted(name for name, x in names.items() if '.array.' not in name
                              and len(x.shape) >= 2 and 'bias' not in name.split('.')[-1]),
  }
