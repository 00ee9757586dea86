"""The workdir as the run's record: the resolved `config.json` (and the guard against resuming
under a different config) and the final `summary.json` the sweep tools look for."""

import json

import jax
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxscale.config import config_base

# Keys that may change between a run and its resumption without changing the experiment.
# (A run stopped by a NaN may be resumed with nonfinite_policy='skip'.)
_RESUMABLE_KEYS = ('config.allow_config_change', 'config.profile_steps', 'config.nonfinite_policy',
                   'config.max_skipped_steps', 'config.memory_check', 'config.deterministic')


def config_as_dict(config) -> dict:
  # A JSON round trip turns tuples into lists, so a saved and a fresh config compare equal.
  return json.loads(config.to_json_best_effort())


def config_differences(old: dict, new: dict) -> list[str]:
  """Keys whose values differ. A key the old record lacks but the new config leaves at its
  declared default is no difference: it was added to the schema after the run started."""
  old_flat, new_flat = config_base.flatten(old), config_base.flatten(new)
  defaults = config_base.flatten(config_as_dict(config_base.get_base_config()))
  _absent = object()

  def differs(key):
    before, after = old_flat.get(key, _absent), new_flat.get(key, _absent)
    if before is _absent and key in defaults and after == defaults[key]:
      return False
    return key not in _RESUMABLE_KEYS and before != after

  return [f'{k}: {old_flat.get(k, "<absent>")!r} -> {new_flat.get(k, "<absent>")!r}'
          for k in sorted(set(old_flat) | set(new_flat)) if differs(k)]


def read_config(workdir) -> ml_collections.ConfigDict:
  """The resolved config a run recorded in `workdir/config.json`."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: {workdir} is not a jaxscale run directory '
                            '(train.run writes config.json when it starts).')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


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
  if jax.process_count() > 1:  # Every process has read the old file before process 0 rewrites it.
    multihost_utils.sync_global_devices('jaxscale_config_checked')
  if jax.process_index() == 0:
    path.write_text(json.dumps(new, indent=2, sort_keys=True) + '\n')


def write_summary(workdir: epath.Path, summary: dict):
  if jax.process_index() == 0:
    (workdir / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')


def read_summary(workdir) -> dict | None:
  """The run's summary.json (written once it finished), or None if there is none."""
  path = epath.Path(workdir) / 'summary.json'
  return json.loads(path.read_text()) if path.exists() else None


def drop_metrics_after(workdir: epath.Path, step: int):
  """Removes metrics.jsonl rows logged after `step` (and a torn last line), so a run resumed
  from the checkpoint at `step` leaves one row per step, as an uninterrupted run would.

  Rows after the checkpoint describe steps the resumed run trains again (on the same batches,
  so with the same values); step -1 means starting from scratch.
  """
  path = workdir / 'metrics.jsonl'
  if jax.process_index() != 0 or not path.exists():
    return
  lines = path.read_text().splitlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line torn by a killed process.
    if row.get('step', 0) <= step:
      kept.append(line)
  if len(kept) == len(lines):
    return
  logging.warning('Dropped %d metrics.jsonl row(s) logged after step %d (they will be logged '
                  'again).', len(lines) - len(kept), step)
  partial = workdir / 'metrics.jsonl.partial'
  partial.write_text(''.join(line + '\n' for line in kept))
  partial.replace(path)  # Atomic: a kill now leaves either the old or the new file.
