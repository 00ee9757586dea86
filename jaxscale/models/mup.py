"""μP, the maximal update parametrisation (Yang et al. 2022, Tensor Programs V; the PyTorch `mup`
package's README): hyperparameters tuned on a narrow model stay optimal on a wide one.

With width multiplier m = width / mup_base_width, for Adam (the paper's Table 3, in `mup`'s form):
- hidden matrices (both sides grow with width): init variance 1/fan_in, update scaled by each
  matrix's own fan-in ratio, base fan-in / fan-in (`mup`'s infshapes): 1/m for those reading the
  residual stream or the attention heads, mup_base_mlp_dim / mlp_dim for the MLP's output (equal
  to 1/m when the MLP grows with the width, 1 when mlp_dim stays fixed);
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
_WIDTH_SIDES = {'embed': 'embed', 'mlp': 'mlp', 'heads': 'attention', 'kv_heads': 'attention',
                'kv': 'attention'}


def width_sides(logical_axes) -> set[str]:
  """The sides of a parameter that grow with width; 'layers', 'vocab', 'classes' and None do not."""
  return {_WIDTH_SIDES[axis] for axis in logical_axes or () if axis in _WIDTH_SIDES}


def is_hidden(variable) -> bool:
  """A hidden matrix: two sides that grow with width (attention QKV and output, MLP in and out)."""
  axes = variable.get_metadata().get('out_sharding') if hasattr(variable, 'get_metadata') else ()
  return len(width_sides(axes)) >= 2


def fan_in_side(variable) -> str:
  """The side a hidden matrix reads: its input axes ('embed', 'mlp' or 'attention'). A matrix
  projecting back into the residual stream (last axis 'embed') reads all its other axes; any other
  reads its first axis."""
  axes = tuple(variable.get_metadata().get('out_sharding') or ())
  core = axes[1:] if axes and axes[0] == 'layers' else axes
  inputs = core[:-1] if core[-1] == 'embed' else core[:1]
  sides = width_sides(inputs)
  if len(sides) != 1:
    raise ValueError(f'A hidden matrix with axes {axes} has no single input side.')
  return sides.pop()


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


def base_mlp_dim(model_config, width: int, base_width: int) -> float:
  """The base model's MLP width: `mup_base_mlp_dim`, or 0 for an MLP that grows with the width
  (mlp_dim * base_width / width)."""
  return model_config.get('mup_base_mlp_dim', 0) or model_config.mlp_dim * base_width / width


def update_scaling(model_config, optimizer_name: str) -> optax.GradientTransformation | None:
  """μP's per-parameter update multipliers for `model_config`, or None under SP: each hidden
  matrix's updates times its base fan-in / fan-in, the rest unchanged."""
  parametrization = model_config.get('parametrization', 'sp')
  if parametrization == 'sp':
    return None
  width, base_width = model_width(model_config), model_config.get('mup_base_width', 0)
  check_parametrization(parametrization, width, base_width)
  if optimizer_name not in ADAM_LIKE_OPTIMIZERS:
    raise ValueError(f"parametrization='mup' defines learning-rate multipliers for "
                     f'{ADAM_LIKE_OPTIMIZERS} (Adam\'s table of Tensor Programs V); '
                     f'optimizer.name={optimizer_name!r} is not one of them.')
  # Base fan-in / fan-in by the side a matrix reads; heads * head_dim is the width.
  factors = {'embed': base_width / width, 'attention': base_width / width}
  if 'mlp_dim' in model_config:
    factors['mlp'] = base_mlp_dim(model_config, width, base_width) / model_config.mlp_dim
  labels = lambda params: param_paths.map_named(
      lambda _, v: fan_in_side(v) if is_hidden(v) else 'vector', params)
  transforms = {side: optax.scale(factor) for side, factor in factors.items()}
  return optax.partition({**transforms, 'vector': optax.identity()}, param_labels=labels)


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
  base_mlp = values.get('mup_base_mlp_dim', 0)
  if isinstance(base_mlp, bool) or not isinstance(base_mlp, int) or base_mlp < 0:
    raise ConfigError(f'config.model.mup_base_mlp_dim={base_mlp!r} must be a non-negative integer '
                      '(the MLP width at the base; 0: the MLP grows with the width).')
  if config.optimizer.name not in ADAM_LIKE_OPTIMIZERS:
    raise ConfigError(f"config.model.parametrization='mup' defines learning-rate multipliers for "
                      f'config.optimizer.name in {", ".join(ADAM_LIKE_OPTIMIZERS)}, not '
                      f'{config.optimizer.name!r}.')
