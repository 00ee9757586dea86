"""Optax optimizer factory: AdamW / SGD / Lion / Adafactor with cosine, WSD or constant schedules.

Weight decay is masked to weight matrices and kernels: norms, biases, position embeddings and
scalars are never decayed (`_decay_mask`).
Parameter groups: `optimizer.frozen` parameters get no update and no optimizer
state (`optax.partition` with `optax.set_to_zero`); `optimizer.lr_multipliers` and
`optimizer.layer_decay` scale the updates of the others, and so does μP
(`model.parametrization='mup'`: hidden matrices' updates times base width / width).
Gradient accumulation is handled by the train step (micro-batches), not by optax.MultiSteps, so
one `train_step` call is always one optimizer update.
"""

import re

import jax
import numpy as np
import optax
from flax import nnx

from jaxscale.config import validation
from jaxscale.config.validation import ConfigError
from jaxscale.core import param_paths
from jaxscale.models import mup

OPTIMIZERS = ('adamw', 'sgd', 'lion', 'adafactor')
SCHEDULES = ('cosine', 'wsd', 'constant')


@validation.register_check
def check_optimizer(config):
  o = config.optimizer
  validation.check_positive(config, 'optimizer.grad_accum_steps', 'optimizer.learning_rate')
  validation.check_choice('config.optimizer.name', o.name, OPTIMIZERS)
  validation.check_choice('config.optimizer.schedule', o.schedule, SCHEDULES)
  if not 0 < o.layer_decay <= 1:
    raise ConfigError(f'config.optimizer.layer_decay={o.layer_decay} must be in '
                      '(0, 1] (1 = no decay).')
  for pair in o.lr_multipliers:
    if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], (int, float)):
      raise ConfigError(f'config.optimizer.lr_multipliers entry {pair!r} must be a '
                        "(regex, factor) pair, e.g. (('^head', 10.0),).")
  if o.warmup_steps < 0 or o.warmup_steps >= config.num_train_steps:
    raise ConfigError(f'config.optimizer.warmup_steps={o.warmup_steps} must be in '
                      f'[0, num_train_steps={config.num_train_steps}).')
  if config.batch_size % o.grad_accum_steps:
    raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by '
                      f'config.optimizer.grad_accum_steps={o.grad_accum_steps}.')


def learning_rate_schedule(opt_config, num_train_steps: int) -> optax.Schedule:
  peak, warmup = opt_config.learning_rate, opt_config.warmup_steps
  final = peak * opt_config.min_lr_ratio
  warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if opt_config.schedule == 'constant':
    main_fn = optax.constant_schedule(peak)
  elif opt_config.schedule == 'cosine':
    main_fn = optax.cosine_decay_schedule(
        peak, max(num_train_steps - warmup, 1), alpha=opt_config.min_lr_ratio)
  elif opt_config.schedule == 'wsd':
    # Warmup-stable-decay (Hagele et al. 2024): hold the peak, then decay linearly in the last
    # `decay_fraction` of training, so a cooldown can branch from any stable checkpoint.
    decay_steps = max(int(round(opt_config.decay_fraction * num_train_steps)), 1)
    stable_steps = max(num_train_steps - warmup - decay_steps, 0)
    main_fn = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, final, decay_steps)],
        [stable_steps])
  else:
    raise ValueError(f'optimizer.schedule={opt_config.schedule!r}; choose one of {SCHEDULES}')
  return optax.join_schedules([warmup_fn, main_fn], [warmup])


# Parameter names that are never decayed whatever their rank: biases (ViT's QKV bias is 3-D) and
# learned position embeddings (as in ViT/DeiT recipes).
_NO_DECAY_NAME_PARTS = ('bias', 'pos')


def _decay_mask(params):
  """True for weight matrices and kernels: rank >= 2 not counting a scanned model's stacked
  'layers' axis (so per-layer norm scales stay undecayed), and not a bias or position embedding."""

  def decays(path, variable):
    if isinstance(variable.get_value(), optax.MaskedNode):
      return variable  # Frozen (optax.partition hides it from this group): nothing to mask.
    name = str(getattr(path[-1], 'key', path[-1]))
    axes = variable.get_metadata().get('out_sharding') or ()
    rank = variable.ndim - sum(axis == 'layers' for axis in axes)
    return variable.replace(
        value=rank >= 2 and not any(part in name for part in _NO_DECAY_NAME_PARTS))

  return jax.tree_util.tree_map_with_path(
      decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(opt_config, num_train_steps: int, model_config=None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The full update rule (clipping + optimizer, parameter groups) and its learning-rate schedule.

  `model_config` brings the model's parametrisation: under μP its per-parameter multipliers join
  the groups (None: the standard parametrisation).
  """
  lr = learning_rate_schedule(opt_config, num_train_steps)
  c = opt_config
  if c.name == 'adamw':
    opt = optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                      mask=_decay_mask)
  elif c.name == 'sgd':
    opt = optax.chain(optax.add_decayed_weights(c.weight_decay, mask=_decay_mask),
                      optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov))
  elif c.name == 'lion':
    opt = optax.lion(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=_decay_mask)
  elif c.name == 'adafactor':
    opt = optax.adafactor(lr, weight_decay_rate=c.weight_decay or None,
                          weight_decay_mask=_decay_mask)
  else:
    raise ValueError(f'optimizer.name={c.name!r}; choose one of {OPTIMIZERS}')
  if c.grad_clip_norm > 0:  # Over the trainable parameters only: frozen ones are outside.
    opt = optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), opt)
  if tuple(c.get('frozen', ())):
    opt = optax.partition({'trainable': opt, 'frozen': optax.set_to_zero()},
                          param_labels=lambda params: param_paths.trainable_labels(params, c))
  mup_scaling = mup.update_scaling(model_config, c.name) if model_config is not None else None
  if mup_scaling is not None:
    opt = optax.chain(opt, mup_scaling)
  if tuple(c.get('lr_multipliers', ())) or c.get('layer_decay', 1.0) != 1.0:
    opt = optax.chain(opt, optax.stateless(
        lambda updates, params=None: jax.tree.map(
            lambda u, f: u * f, updates, update_factors(updates, c))))
  return opt, lr


# Parameters outside the layer stack that sit below it (token, patch and position embeddings,
# ViT's class token, a ResNet stem): the deepest layer decay. Anchored, so an untied LM's
# 'unembed_DxV' (its head) is not taken for an embedding.
_BELOW_STACK = re.compile(r'^(?:embed|patch|pos|cls|stem)')
_UNSCANNED_LAYER = re.compile(r'(?:^|\.)blocks\.(\d+)\.')


def update_factors(params, opt_config):
  """Per-parameter update multipliers: the product of every matching `lr_multipliers` factor and
  the layer-wise decay `layer_decay ** (L + 1 - depth)` (depth 0 = embeddings, 1..L = blocks,
  L + 1 = head and final norm). A scanned stack gets a factor per layer along its leading axis."""
  multipliers = tuple(tuple(pair) for pair in opt_config.get('lr_multipliers', ()))
  decay = opt_config.get('layer_decay', 1.0)
  names = param_paths.named_leaves(params)
  num_layers = _num_layers(names)

  def factor(name, variable):
    value = 1.0
    for pattern, multiplier in multipliers:
      if re.search(pattern, name):
        value *= multiplier
    if decay == 1.0 or not num_layers:
      return value
    if name.startswith('blocks.') and param_paths.stacked_layers(variable):
      depth_L = np.arange(1, num_layers + 1, dtype=np.float32)
      shape = (num_layers,) + (1,) * (len(param_paths.shape_of(variable)) - 1)
      return (value * decay ** (num_layers + 1 - depth_L)).reshape(shape)
    layer = _UNSCANNED_LAYER.search(name)
    if layer:
      return value * decay ** (num_layers - int(layer.group(1)))
    if _BELOW_STACK.search(name):
      return value * decay ** (num_layers + 1)
    return value

  return param_paths.map_named(factor, params)


def _num_layers(names: dict) -> int:
  stacked = [v for n, v in names.items() if n.startswith('blocks.') and param_paths.stacked_layers(v)]
  if stacked:
    return param_paths.shape_of(stacked[0])[0]
  indices = {int(m.group(1)) for n in names for m in [_UNSCANNED_LAYER.search(n)] if m}
  return max(indices) + 1 if indices else 0
