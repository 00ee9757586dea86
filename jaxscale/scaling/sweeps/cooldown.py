"""The WSD cooldown trick (Hägele et al. 2024): one trunk run per model shape, cooldowns branched.

Under a warmup-stable-decay schedule a run of T steps holds the peak learning rate until step
T - round(decay_fraction * T). So a shorter run of the same shape is, step for step, the longest
run of that shape up to any checkpoint inside its own stable phase: resuming from that checkpoint
with its own num_train_steps reproduces it exactly (same seed, same data order, restored with
the data iterator) while skipping the shared prefix.

`branch_runs` rewrites planned runs accordingly: every run of a shape gets the WSD schedule and
one warmup; the longest (the trunk) checkpoints every `checkpoint_every_steps` and keeps them
all; each other run gets `branch_from` = {run, step}, the trunk's last checkpoint before its
cooldown starts. The launcher copies that checkpoint into the branch before starting it.
"""

import collections

from jaxscale.scaling.sweeps import shapes


def branch_runs(runs: list[dict], checkpoint_every_steps: int, decay_fraction: float) -> list[dict]:
  groups = collections.defaultdict(list)
  for run in runs:
    groups[tuple(run[key] for key in shapes.SHAPE_KEYS)].append(run)
  planned = []
  for group in groups.values():
    planned.extend(_branch_group(group, checkpoint_every_steps, decay_fraction))
  return planned


def _branch_group(group, every, decay_fraction):
  trunk = max(group, key=lambda run: run['steps'])
  warmup = min(_override(run, 'optimizer.warmup_steps') for run in group)
  shared = ['optimizer.schedule=wsd', f'optimizer.warmup_steps={warmup}']
  planned = []
  for run in group:
    run = {**run, 'overrides': _replace(run['overrides'], shared)}
    stable_end = run['steps'] - max(round(decay_fraction * run['steps']), 1)
    branch_step = (stable_end // every) * every
    if run['name'] != trunk['name'] and branch_step > warmup:
      run['branch_from'] = {'run': trunk['name'], 'step': branch_step}
    planned.append(run)
  trunk_index = next(i for i, run in enumerate(planned) if run['name'] == trunk['name'])
  planned[trunk_index]['overrides'] = _replace(planned[trunk_index]['overrides'], [
      f'checkpoint_every_steps={every}',
      f'keep_checkpoints={trunk["steps"] // every + 1}'])
  return planned


def _override(run, key):
  values = [item.split('=', 1)[1] for item in run['overrides'] if item.startswith(key + '=')]
  return int(values[-1])


def _replace(overrides, replacements):
  """Overrides with each replacement's key set to its value (later entries win in the trainer,
  but one entry per key keeps command lines readable)."""
  keys = {item.split('=', 1)[0] for item in replacements}
  return [item for item in overrides if item.split('=', 1)[0] not in keys] + list(replacements)
