"""Checks a config before anything is built or compiled.

This module holds the machinery and the run-level checks. Each component (a model, a dataset, an
objective, the optimizer, a transform such as LoRA or pruning) declares the checks of its own keys
next to its code and registers them with `register_check`; `validate` runs them all without
knowing any component by name. Every error names the offending key and what is allowed, e.g.
`config.optimizer.schedule='cosin' is not allowed; choose one of: constant, cosine, wsd`.
"""

import difflib
from collections.abc import Callable

from jaxscale.config import config_base

NONFINITE_POLICIES = ('stop', 'skip')
MEMORY_CHECKS = ('error', 'warn', 'off')

_CHECKS: dict[str, Callable] = {}


class ConfigError(ValueError):
  pass


def register_check(check: Callable) -> Callable:
  """Decorator: `check(config)` raises ConfigError for a bad value of the component's keys."""
  _CHECKS[f'{check.__module__}.{check.__qualname__}'] = check
  return check


def registered_checks() -> list[str]:
  return sorted(_CHECKS)


def unknown_key_error(key: str, allowed: list[str]) -> ConfigError:
  close = difflib.get_close_matches(key, allowed, n=1)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  return ConfigError(f'Unknown config key {key!r}.{hint} Allowed keys: {", ".join(sorted(allowed))}')


def check_choice(key: str, value, choices):
  if value not in choices:
    raise ConfigError(f'{key}={value!r} is not allowed; choose one of: {", ".join(sorted(choices))}')


def check_positive(config, *keys):
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    if value <= 0:
      raise ConfigError(f'config.{key}={value} must be positive.')


def check_positive_ints(section: dict, prefix: str, *names):
  for name in names:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ConfigError(f'{prefix}.{name}={value!r} must be a positive integer.')


def check_keys_and_types(config):
  """Every key is in the declared schema, with its type (model keys belong to the model)."""
  declared = config_base.flatten(config_base.get_base_config())
  given = config_base.flatten(config)
  for key, value in given.items():
    if key.startswith('config.model.'):
      continue  # Checked against the chosen model's constructor by the model registry.
    if key not in declared:
      raise unknown_key_error(key, [k for k in declared if not k.startswith('config.model.')])
    expected = type(declared[key])
    ok = isinstance(value, expected) or (expected is float and isinstance(value, int)) or (
        expected is tuple and isinstance(value, list))
    if not ok or (expected is not bool and isinstance(value, bool)):
      raise ConfigError(f'{key}={value!r} has type {type(value).__name__}; expected {expected.__name__}.')


def _check_run(config):
  """The run-level keys: lengths and intervals, policies."""
  check_positive(config, 'num_train_steps', 'batch_size', 'log_every_steps', 'eval_every_steps',
                 'num_eval_batches', 'checkpoint_every_steps', 'keep_checkpoints')
  check_choice('config.nonfinite_policy', config.nonfinite_policy, NONFINITE_POLICIES)
  check_choice('config.memory_check', config.memory_check, MEMORY_CHECKS)
  if config.max_skipped_steps < 0:
    raise ConfigError(f'config.max_skipped_steps={config.max_skipped_steps} must be >= 0.')
  max_seq_len = config.get('export', {}).get('max_seq_len', 0)
  if max_seq_len < 0 or 0 < max_seq_len < config.dataset.seq_len:
    raise ConfigError(f'config.export.max_seq_len={max_seq_len} must be 0 (the training seq_len) '
                      f'or at least config.dataset.seq_len={config.dataset.seq_len}.')


def validate(config):
  """Raises ConfigError naming the first bad key; returns quietly when the config is sound.

  Runs the checks registered so far: `jaxscale.train.checks.validate` loads every component
  first (and checks the batch against the mesh), which is what a run wants.
  """
  check_keys_and_types(config)
  _check_run(config)
  for check in _CHECKS.values():
    check(config)
