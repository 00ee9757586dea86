"""Initial parameters from another run's checkpoint (`config.init_from.*`), every one accounted for.

Only the parameters to load are read (Orbax partial restore), each straight into the new run's
sharding, whatever mesh the source trained on. Every parameter of the new model ends up in one
list of the report (written to `init_report.json`):
- `loaded`: the source's values, exactly;
- `reinitialised`: fresh initialisation on purpose (`init_from.reinit`);
- `new`: fresh because the source has no such parameter (or `load` did not select it), or its
  shape differs. Both are errors naming the parameters and shapes unless
  `init_from.missing='init'`, so a partial restore never silently keeps random weights.
Source parameters the new model does not take are listed as `unused`.
"""

import dataclasses
import json

import jax
from absl import logging
from etils import epath

from jaxscale.checkpoint import checkpointing
from jaxscale.config import validation, workdir as workdir_lib
from jaxscale.core import param_paths, paths

REPORT_FILE = 'init_report.json'
MISSING_POLICIES = ('error', 'init')


@validation.register_check
def check_init_from(config):
  validation.check_choice('config.init_from.missing', config.init_from.missing, MISSING_POLICIES)


class InitFromError(ValueError):
  pass


@dataclasses.dataclass
class Report:
  source: str
  step: int
  loaded: list[str]
  reinitialised: list[str]
  new: list[str]
  unused: list[str]
  shape_mismatches: dict[str, dict]  # name -> {'source': shape, 'new': shape}

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _source_manager(workdir: epath.Path):
  if not (workdir / 'checkpoints').exists():
    raise InitFromError(f'init_from.workdir={workdir} has no checkpoints/ directory; point it at '
                        'a finished (or checkpointed) jaxscale run.')
  return checkpointing.read_only_manager(workdir)


def _source_step(manager, requested: int, workdir) -> int:
  steps = manager.all_steps()
  if not steps:
    raise InitFromError(f'init_from.workdir={workdir} holds no finished checkpoint.')
  if requested < 0:
    return max(steps)
  if requested not in steps:
    raise InitFromError(f'init_from.step={requested} is not a checkpoint of {workdir}; it has '
                        f'steps {sorted(steps)}.')
  return requested


def plan(init_config, new_names: dict, source_params: dict) -> tuple[list, list, list, dict]:
  """(loaded, reinitialised, new, shape mismatches) by the rules in the module docstring."""
  load_patterns = tuple(init_config.load) or ('.*',)
  loaded, reinitialised, new, mismatches = [], [], [], {}
  for name, leaf in new_names.items():
    if param_paths.matches(name, init_config.reinit):
      reinitialised.append(name)
    elif name in source_params and param_paths.matches(name, load_patterns):
      source_shape = tuple(source_params[name][1].shape)
      if source_shape == param_paths.shape_of(leaf):
        loaded.append(name)
      else:
        mismatches[name] = {'source': list(source_shape), 'new': list(param_paths.shape_of(leaf))}
        new.append(name)
    else:
      new.append(name)
  return loaded, reinitialised, new, mismatches


def _refuse_unaccounted(new, mismatches, source, init_config):
  if init_config.missing == 'init' or not new:
    return
  lines = []
  for name in new:
    if name in mismatches:
      lines.append(f'{name}: shape {tuple(mismatches[name]["source"])} in the source, '
                   f'{tuple(mismatches[name]["new"])} in this model')
    else:
      lines.append(f'{name}: not in the source checkpoint (or not selected by init_from.load)')
  raise InitFromError(
      f'init_from {source}: {len(new)} parameter(s) of this model would not be loaded:\n  '
      + '\n  '.join(lines) + '\nName them in --config.init_from.reinit (regexes) to initialise '
      "them fresh on purpose, or pass --config.init_from.missing=init to accept every such case.")


def restore_params(init_config, params):
  """(params with the source's values where loaded, Report). `params` is the new run's freshly
  initialised, sharded nnx.State of parameters."""
  source = paths.resolve(init_config.workdir)
  workdir_lib.read_config(source)  # A clear error when it is not a run directory.
  manager = _source_manager(source)
  step = _source_step(manager, init_config.step, source)
  source_params = checkpointing.saved_params(manager, step)
  new_names = param_paths.named_leaves(params)
  loaded, reinitialised, new, mismatches = plan(init_config, new_names, source_params)
  _refuse_unaccounted(new, mismatches, source, init_config)

  target = {}
  for name in loaded:
    key_path, _ = source_params[name]
    node = target
    for key in key_path[:-1]:
      node = node.setdefault(key, {})
    array = new_names[name][...]
    node[key_path[-1]] = jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=array.sharding)
  restored = checkpointing.restore_fields(manager, step, {'params': target})['params'] if loaded else {}
  manager.close()

  def value(name, leaf):
    if name not in loaded:
      return leaf[...]
    node = restored
    for key in source_params[name][0]:
      node = node[key]
    return node

  report = Report(source=str(source), step=step, loaded=loaded, reinitialised=reinitialised,
                  new=new, unused=sorted(set(source_params) - set(new_names)),
                  shape_mismatches=mismatches)
  return param_paths.map_named(value, params), report


def log_and_write(report: Report, workdir: epath.Path):
  logging.info('init_from %s step %d: %d parameter(s) loaded, %d reinitialised (%s), %d new (%s), '
               '%d source parameter(s) unused.', report.source, report.step, len(report.loaded),
               len(report.reinitialised), ', '.join(report.reinitialised) or '-', len(report.new),
               ', '.join(report.new) or '-', len(report.unused))
  if jax.process_index() == 0:
    (workdir / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2) + '\n')
