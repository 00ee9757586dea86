"""μP, the maximal update parametrisation (Yang et al. 2022, Tensor Programs V; the PyTorch `mup`
package's README): hyperparameters tuned on a narrow model stay optimal on a wide one.

With width multiplier m = width / mup_base_width, for Adam (the paper's Table 3, in `mup`'s form):
- hidden matrices (both sides grow with width): init variance 1/fan_in, update scaled by 1/m;
- input weights, embeddings, norms and biases (one side or none grows): init and LR independent
  of width;
- the readout: its output is multiplied by 1/m (and an untied readout starts at zero), which
  gives it μP's 1/fan_in effective update with the LR unchanged;
- attention logits are scaled by 1/head_dim instead of 1/sqrt(head_dim).

The models read their side (`embedding_std`, `readout_multiplier`, `attention_scale`); the
optimizer's side is `update_scaling`, an `optax.partition` whose groups come from each parameter's
logical axis names, so it holds for scanned layers (a leading 'layers' axis is not a side), for
any sharding, and alongside `optimizer.frozen` / `lr_multipliers` / `layer_decay`.
"""

import optax

from jaxscale.config.validation import ConfigError, check_choice
from jaxscale.core import param_paths

PARAMETRIZATIONS = ('sp', 'mup')
# Optimizers whose per-coordinate update size does not depend on the gradient's scale, for which
# the Adam multipliers above hold (Lion's sign update is Adam's limit).
ADAM_LIKE_OPTIMIZERS = ('adamw', 'lion')

# Logical axes that grow with width, by the side of a matrix they make up: an attention weight's
# 'heads' x 'kv' is one side (heads * head_dim = width), so a per-head bias stays vector-like.
_WIDTH_SIDES = {'embed': 'embed', 'mlp': 'mlp', 'heads': 'attention', 'kv': 'attention'}


def width_sides(logical_axes) -> set[str]:
  """The sides of a parameter that grow with width; 'layers', 'vocab', 'classes' and None do not."""
  return {_WIDTH_SIDES[axis] for axis in logical_axes or () if axis in _WIDTH_SIDES}


def is_hidden(variable) -> bool:
  """A hidden matrix: two sides that grow with width (attention QKV and output, MLP in and out)."""
  axes = variable.get_metadata().get('out_sharding') if hasattr(variable, 'get_metadata') else ()
  return len(width_sides(axes)) >= 2


def param_groups(params):
  """'hidden' or 'vector' for each parameter (optax.partition's labels)."""
  return param_paths.map_named(lambda _, v: 'hidden' if is_hidden(v) else 'vector', params)


def check_parametrization(parametrization: str, width: int, base_width: int):
  """Raises naming the model keys when μP is asked for without a valid base width."""
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(f'parametrization={parametrization!r}; choose one of {PARAMETRIZATIONS}.')
  if parametrization == 'mup' and (isinstance(base_width, bool) or not isinstance(base_width, int)
                                   or base_width <= 0):
    raise ValueError(f"parametrization='mup' needs mup_base_width, a positive integer (the width "
                     f'the hyperparameters were tuned at), not {base_width!r}; the model has width '
                     f'{width}.')


def width_multiplier(parametrization: str, width: int, base_width: int) -> float:
  """m = width / base_width under μP; 1 under the standard parametrisation."""
  return width / base_width if parametrization == 'mup' else 1.0


def embedding_std(parametrization: str, width: int, base_width: int) -> float:
  """Token embeddings: 1/sqrt(width) under SP; under μP their coordinates must not shrink with
  width, so the base width's value (equal to SP at the base width)."""
  return (base_width if parametrization == 'mup' else width) ** -0.5


def readout_multiplier(parametrization: str, width: int, base_width: int) -> float | None:
  """The factor on the logits: base/width under μP, None (no multiply) under SP."""
  return base_width / width if parametrization == 'mup' else None


def attention_scale(parametrization: str, head_dim: int) -> float | None:
  """Attention logit scale: 1/head_dim under μP (queries and keys become correlated during
  training, so their dot product grows like head_dim); None (1/sqrt(head_dim)) under SP."""
  return 1.0 / head_dim if parametrization == 'mup' else None


def model_width(model_config) -> int:
  """The width μP scales by: the transformer's d_model, ViT's width."""
  for key in ('d_model', 'width'):
    if key in model_config:
      return model_config[key]
  raise ValueError(f'Model {model_config.get("name")!r} has no width (d_model or width): μP '
                   'applies to the transformer, the encoder and ViT.')


def update_scaling(model_config, optimizer_name: str) -> optax.GradientTransformation | None:
  """μP's per-parameter update multipliers for `model_config`, or None under SP: hidden matrices'
  updates times base/width, the rest unchanged."""
  parametrization = model_config.get('parametrization', 'sp')
  if parametrization == 'sp':
    return None
  width, base_width = model_width(model_config), model_config.get('mup_base_width', 0)
  check_parametrization(parametrization, width, base_width)
  if optimizer_name not in ADAM_LIKE_OPTIMIZERS:
    raise ValueError(f"parametrization='mup' defines learning-rate multipliers for "
                     f'{ADAM_LIKE_OPTIMIZERS} (Adam\'s table of Tensor Programs V); '
                     f'optimizer.name={optimizer_name!r} is not one of them.')
  hidden_factor = 1.0 / width_multiplier(parametrization, width, base_width)
  return optax.partition({'hidden': optax.scale(hidden_factor), 'vector': optax.identity()},
                         param_labels=param_groups)


def check_config(config, values: dict):
  """μP needs a base width and an optimizer whose multipliers it defines."""
  check_choice('config.model.parametrization', values['parametrization'], PARAMETRIZATIONS)
  if values['parametrization'] != 'mup':
    return
  base = values['mup_base_width']
  if isinstance(base, bool) or not isinstance(base, int) or base <= 0:
    raise ConfigError(f"config.model.mup_base_width={base!r} must be a positive integer with "
                      "config.model.parametrization='mup' (the width the hyperparameters were "
                      'tuned at).')
  if config.optimizer.name not in ADAM_LIKE_OPTIMIZERS:
    raise ConfigError(f"config.model.parametrization='mup' defines learning-rate multipliers for "
                      f'config.optimizer.name in {", ".join(ADAM_LIKE_OPTIMIZERS)}, not '
                      f'{config.optimizer.name!r}.')
