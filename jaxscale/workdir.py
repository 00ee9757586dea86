"""The workdir as the run's record: the resolved `config.json` (and the guard against resuming
under a different config) and the final `summary.json` the sweep tools look for."""

import json

import jax
from etils import epath

from jaxscale import config_base

# Keys that may change between a run and its resumption without changing the experiment.
_RESUMABLE_KEYS = ('config.allow_config_change', 'config.profile_steps')


def config_as_dict(config) -> dict:
  # A JSON round trip turns tuples into lists, so a saved and a fresh config compare equal.
  return json.loads(config.to_json_best_effort())


def config_differences(old: dict, new: dict) -> list[str]:
  old_flat, new_flat = config_base.flatten(old), config_base.flatten(new)
  return [f'{k}: {old_flat.get(k, "<absent>")!r} -> {new_flat.get(k, "<absent>")!r}'
          for k in sorted(set(old_flat) | set(new_flat))
          if k not in _RESUMABLE_KEYS and old_flat.get(k) != new_flat.get(k)]


def record_config(workdir: epath.Path, config):
  """Writes config.json, or refuses to reuse a workdir whose recorded config differs."""
  path = workdir / 'config.json'
  new = config_as_dict(config)
  if path.exists():
    diffs = config_differences(json.loads(path.read_text()), new)
    if diffs and not config.allow_config_change:
      raise ValueError(
          f'{workdir} holds a run with a different config; differing keys:\n  ' + '\n  '.join(diffs)
          + '\nUse a new --workdir, or pass --config.allow_config_change=True to resume anyway.')
  if jax.process_index() == 0:
    path.write_text(json.dumps(new, indent=2, sort_keys=True) + '\n')


def write_summary(workdir: epath.Path, summary: dict):
  if jax.process_index() == 0:
    (workdir / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
