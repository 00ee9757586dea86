"""Run configs as the trainer will see them: a config file plus `key=value` overrides.

The sweep planner needs a run's batch size, sequence length and model before launching it, so it
loads the same config file and applies the same overrides the trainer's command line will get
(`--config.key=value`), parsed by the same ml_collections config flags.
"""

from absl import flags as absl_flags
import ml_collections
from ml_collections import config_flags

from jaxscale.config.config_base import load_config_file  # noqa: F401  (the planner's entry point)


def apply_overrides(config, overrides) -> ml_collections.ConfigDict:
  """A copy of `config` with each 'a.b=value' set, parsed exactly as the trainer's command line
  parses `--config.a.b=value` (ml_collections' config flags on absl): what it rejects, such as
  `num_train_steps=1e3` for an integer, is rejected here, before any run is planned."""
  overrides = list(overrides)
  for override in overrides:
    if '=' not in override:
      raise ValueError(f'Override {override!r} is not of the form key=value.')
  argv = ['planner'] + [f'--config.{override}' for override in overrides]
  flag_values = absl_flags.FlagValues()
  try:
    holder = config_flags.DEFINE_config_dict(
        'config', ml_collections.ConfigDict(config.to_dict()), flag_values=flag_values,
        sys_argv=argv)
  except (AttributeError, KeyError) as error:
    raise KeyError(f'{_unknown_key(config, overrides)}: the config has no such key ({error}).')
  try:
    flag_values(argv)
  except absl_flags.Error as error:
    raise ValueError(f'{error} (the trainer rejects this override too; '
                     f'e.g. integers take no exponent: 1000, not 1e3).') from None
  return ml_collections.ConfigDict(holder.value.to_dict())


def _unknown_key(config, overrides) -> str:
  """The first override whose key the config lacks, for the error message."""
  for override in overrides:
    node = config
    for part in override.partition('=')[0].split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        return f'Override {override!r}'
      node = node[part]
  return f'Overrides {overrides!r}'

