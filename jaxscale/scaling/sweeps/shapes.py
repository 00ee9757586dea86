"""Transformer shapes for a target parameter count, by one stated rule.

The rule (Kaplan et al. 2020 find loss depends weakly on shape at fixed N, so one consistent
family is what matters): at each depth 1..max_layers, the width (a multiple of head_dim) whose
exact parameter count (jaxscale.metrics.flops) is nearest the target; of those, the one whose
d_model / num_layers is nearest aspect_ratio. num_heads = d_model / head_dim and
mlp_dim = mlp_ratio * d_model. Width moves in head_dim steps, so sizes are finely spaced.
"""

import dataclasses
import math

import ml_collections

from jaxscale.metrics import flops

SHAPE_KEYS = ('num_layers', 'd_model', 'num_heads', 'mlp_dim')  # What the rule sets.


@dataclasses.dataclass(frozen=True)
class ShapeRule:
  aspect_ratio: float = 32.0   # d_model / num_layers.
  head_dim: int = 16
  mlp_ratio: int = 4
  max_layers: int = 48

  @classmethod
  def from_config(cls, config) -> 'ShapeRule':
    return cls(**{field.name: config[field.name] for field in dataclasses.fields(cls)
                  if field.name in config})


def shape(num_layers: int, d_model: int, rule: ShapeRule) -> dict:
  return {'num_layers': num_layers, 'd_model': d_model, 'num_heads': d_model // rule.head_dim,
          'mlp_dim': rule.mlp_ratio * d_model}


def with_shape(model_config, shape_dict: dict) -> ml_collections.ConfigDict:
  model = ml_collections.ConfigDict(model_config.to_dict())
  model.update(shape_dict)
  return model


def shape_for_params(target: float, model_config, vocab_size: int, rule: ShapeRule,
                     count='total') -> dict:
  """The rule's shape whose parameter count ('total' or 'non_embedding') best matches `target`."""
  if target <= 0 or vocab_size <= 0:
    raise ValueError(f'Need a positive target size and vocab_size; got {target}, {vocab_size}.')
  index = {'total': 0, 'non_embedding': 1}[count]

  def params(num_layers, d_model):
    return flops.count_params(with_shape(model_config, shape(num_layers, d_model, rule)),
                              vocab_size)[index]

  candidates = [(num_layers, _width_for(target, num_layers, rule, params))
                for num_layers in range(1, rule.max_layers + 1)]
  num_layers, d_model = min(
      candidates, key=lambda c: (abs(math.log(c[1] / (c[0] * rule.aspect_ratio))),
                                 abs(math.log(params(*c) / target))))
  return shape(num_layers, d_model, rule)


def _width_for(target, num_layers, rule, params) -> int:
  """The multiple of head_dim whose count at this depth is nearest the target (log scale)."""
  d_model = rule.head_dim
  while params(num_layers, d_model + rule.head_dim) < target:
    d_model += rule.head_dim
  wider = d_model + rule.head_dim
  return min((d_model, wider), key=lambda d: abs(math.log(params(num_layers, d) / target)))
