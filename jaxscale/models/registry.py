"""The model registry, `config.model.name` -> an NNX module class built as
`cls(**config.model, rngs=...)`, and the checks every model's keys get.

Each registered class takes its size knobs as keyword arguments, so the keys of `config.model`
are checked against the constructor's signature. A model may register its own value checks as
well (`MODELS.register(name, check=fn)`, `fn(config, values)` with `values` the constructor's
defaults overridden by the config).
"""

import inspect
import math

from jaxscale.config import validation
from jaxscale.config.validation import ConfigError
from jaxscale.core.registry import Registry

MODELS = Registry('model')


def model_values(model_config) -> dict:
  """The config's model keys over the constructor's defaults (configs may leave defaults out)."""
  params = inspect.signature(MODELS.get(model_config.name).__init__).parameters
  values = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
  return {**values, **model_config}


@validation.register_check
def check_model(config):
  model_config = config.model
  if model_config.name not in MODELS:
    raise ConfigError(f'config.model.name={model_config.name!r} is not a registered model; '
                      f'choose one of: {", ".join(MODELS.names())}')
  cls = MODELS.get(model_config.name)
  params = inspect.signature(cls.__init__).parameters
  allowed = [p for p in params if p not in ('self', 'rngs')]
  for key in model_config:
    if key != 'name' and key not in allowed:
      raise validation.unknown_key_error(
          f'config.model.{key}', [f'config.model.{k}' for k in allowed + ['name']])
  for name, p in params.items():
    if name not in ('self', 'rngs') and p.default is inspect.Parameter.empty and name not in model_config:
      raise ConfigError(f'config.model.{name} is required by model {model_config.name!r}.')
  values = model_values(model_config)
  own_check = MODELS.check(model_config.name)
  if own_check:
    own_check(config, values)
  scale = values.get('init_scale', 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
    raise ConfigError(f'config.model.init_scale={scale!r} must be a positive number (a factor on '
                      'the initial weights; 1 keeps the model\'s own init).')
  if config.optimizer.grad_accum_steps > 1 and getattr(cls, 'uses_batch_norm', False):
    # Each micro-batch would normalise by its own statistics and move the running averages once
    # per micro-batch: not the step one pass over the whole batch takes.
    raise ConfigError(
        f'config.optimizer.grad_accum_steps={config.optimizer.grad_accum_steps} with '
        f'model {model_config.name!r}, which uses batch norm: its statistics would come from each '
        'micro-batch, not from the whole batch. Set optimizer.grad_accum_steps=1 and fit the batch '
        'with a larger mesh, FSDP or model.dtype=bfloat16.')


def check_image_classifier_sizes(values: dict):
  """num_classes and image_size of an image classifier: 0 means taken from the dataset."""
  for name in ('num_classes', 'image_size'):
    if isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < 0:
      raise ConfigError(f'config.model.{name}={values[name]!r} must be a non-negative integer '
                        '(0: take it from the dataset).')
