"""What a multi run (`multi.py`) can vary per model and which configs it trains, without JAX.

The sweep launcher reads these to decide which runs can share one program; `multi.build` refuses
the same configs with the same reasons.
"""

# Per-model values a multi run accepts -> the config key each one sets.
ARRAY_HPARAMS = {
    'learning_rate': 'optimizer.learning_rate',
    'weight_decay': 'optimizer.weight_decay',
    'seed': 'seed',
    'init_scale': 'model.init_scale',
}
DECAY_INJECTABLE = ('adamw', 'sgd', 'lion')  # Optimizers whose weight decay can be an array.


def unsupported(config) -> list[str]:
  """Why `config` cannot be trained by a multi run ([] if it can)."""
  problems = []
  if config.init_from.workdir:
    problems.append('config.init_from.workdir is set')
  if config.lora.rank:
    problems.append('config.lora.rank is set')
  if tuple(config.optimizer.frozen):
    problems.append('config.optimizer.frozen is set')
  if any(config.mesh[axis] > 1 for axis in ('data', 'fsdp', 'tensor')):
    problems.append('config.mesh asks for more than one device (a multi run uses one)')
  if config.optimizer.name not in DECAY_INJECTABLE:
    problems.append(f'config.optimizer.name={config.optimizer.name!r} (multi supports '
                    f'{", ".join(DECAY_INJECTABLE)})')
  return problems


def get(config, dotted_key: str, default=None):
  """config['a']['b'] for 'a.b', or `default` where the config lacks it (a vision model's config
  may leave model.init_scale to the constructor's default)."""
  node = config
  for part in dotted_key.split('.'):
    if part not in node:
      return default
    node = node[part]
  return node
