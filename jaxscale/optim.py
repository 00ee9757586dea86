"""Optax optimizer factory: AdamW / SGD / Lion / Adafactor with cosine, WSD or constant schedules.

Weight decay is masked to matrices (ndim >= 2): norms, biases and scalars are never decayed.
Gradient accumulation is handled by the train step (micro-batches), not by optax.MultiSteps, so
one `train_step` call is always one optimizer update.
"""

import jax
import optax

OPTIMIZERS = ('adamw', 'sgd', 'lion', 'adafactor')
SCHEDULES = ('cosine', 'wsd', 'constant')


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


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt_config, num_train_steps: int) -> tuple[optax.GradientTransformation,
                                                               optax.Schedule]:
  """The full update rule (clipping + optimizer) and its learning-rate schedule."""
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
  if c.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), opt)
  return opt, lr
