"""Orbax checkpoints of the train state together with the tf.data iterator position.

Each checkpoint step holds two items: `state` (the sharded TrainState, restored onto whatever
mesh the run now has) and `data` (each process's tf.data iterator, so a resumed run reads
exactly the batches the interrupted one would have).

Crash safety comes from Orbax: a step is written under a temporary name and renamed when
complete, so a run killed mid-save leaves no step directory a restart could pick up, and
keep-N deletes old steps only after a newer one is committed. A checkpoint that is damaged
after the fact (truncated or missing files) is detected at restore: `restore_latest` falls back
to the newest one that restores and renames the damaged ones to `<step>.corrupt`.
"""

import contextlib
import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
import tensorflow as tf
from etils import epath


REPLAY_SUFFIX = '.replay'
CORRUPT_SUFFIX = '.corrupt'  # Not an integer name: Orbax no longer sees it as a step.


class TfDataIteratorHandler(ocp.CheckpointHandler):
  """Writes one `tf.train.Checkpoint` of the iterator per process (each reads its own shard)."""

  def _prefix(self, directory: epath.Path) -> str:
    return os.fspath(directory / f'process_{jax.process_index()}_of_{jax.process_count()}')

  def save(self, directory: epath.Path, args: 'TfDataIteratorSave'):
    try:
      tf.train.Checkpoint(iterator=args.iterator).write(self._prefix(directory))
    except tf.errors.FailedPreconditionError as e:
      # Pipelines with Python ops (py_function, tfds mock data) cannot serialise their position;
      # record that, and resume by replaying the deterministic stream instead.
      logging.warning('The input pipeline cannot be checkpointed (%s); a resumed run will '
                      'replay the data stream up to its step.', str(e).splitlines()[0])
      tf.io.gfile.GFile(self._prefix(directory) + REPLAY_SUFFIX, 'w').write('replay\n')

  def restore(self, directory: epath.Path, args: 'TfDataIteratorRestore'):
    """The restored iterator, or None where the position must be replayed by the caller."""
    prefix = self._prefix(directory)
    if tf.io.gfile.exists(prefix + REPLAY_SUFFIX):
      return None
    if not tf.io.gfile.exists(prefix + '.index'):
      raise FileNotFoundError(
          f'No data-iterator checkpoint for this process at {prefix}: the checkpoint was written '
          'by a run with a different number of processes.')
    tf.train.Checkpoint(iterator=args.iterator).read(prefix).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(TfDataIteratorHandler, for_save=True)
@dataclasses.dataclass
class TfDataIteratorSave(ocp.args.CheckpointArgs):
  iterator: tf.data.Iterator


@ocp.args.register_with_handler(TfDataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class TfDataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: tf.data.Iterator


def has_checkpoints(workdir: epath.Path) -> bool:
  """Whether `workdir` holds a checkpoint step (finished or damaged) of its own."""
  directory = epath.Path(workdir) / 'checkpoints'
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def make_manager(workdir: epath.Path, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=config.async_checkpointing,
      # A step directory only appears once fully written (atomic rename), and old checkpoints
      # are deleted only after a newer one has been committed.
      create=True,
  )
  return ocp.CheckpointManager(workdir / 'checkpoints', options=options,
                               item_names=('state', 'data'))


def save(manager: ocp.CheckpointManager, step: int, state, iterator: tf.data.Iterator,
         force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=TfDataIteratorSave(iterator)), force=force)


class CheckpointSaveError(RuntimeError):
  pass


class Saver:
  """Saves through `manager` and surfaces a failed save at the next step boundary.

  An asynchronous save that fails in Orbax's background thread is only reported by the next
  `wait_until_finished` (or the next save, a whole interval later); `check` asks as soon as the
  save is done, so training never goes on for long without the checkpoint it believes it has.
  """

  def __init__(self, manager: ocp.CheckpointManager, to_checkpoint=None):
    self.manager = manager
    self._to_checkpoint = to_checkpoint or (lambda state: state)  # The fields to save.
    self._pending_step = None

  def save(self, step: int, state, iterator: tf.data.Iterator):
    self.check(step, wait=True)
    with self._explained(step, step):
      save(self.manager, step, self._to_checkpoint(state), iterator, force=True)
    self._pending_step = step

  def check(self, current_step: int, wait: bool = False):
    """Raises CheckpointSaveError if the pending save failed; `wait` blocks until it is done."""
    if self._pending_step is None or (not wait and self.manager.is_saving_in_progress()):
      return
    with self._explained(self._pending_step, current_step):
      self.manager.wait_until_finished()
    self._pending_step = None

  @contextlib.contextmanager
  def _explained(self, failed_step: int, current_step: int):
    try:
      yield
    except Exception as e:  # noqa: BLE001  (TensorStore, OS and Orbax errors alike)
      directory = epath.Path(self.manager.directory)
      self.manager.reload()
      finished = [s for s in self.manager.all_steps() if s != failed_step]
      kept = (f'the finished checkpoints (steps {", ".join(map(str, sorted(finished)))}) are '
              'intact' if finished else 'no earlier checkpoint had finished')
      raise CheckpointSaveError(
          f'Saving the checkpoint of step {failed_step} to {directory / str(failed_step)} failed '
          f'({type(e).__name__}: {str(e).splitlines()[0][:300]}). Training stopped at step '
          f'{current_step}; {kept}. Fix the cause (disk space, permissions, the path) and rerun '
          'the same command to resume.') from e


def restore(manager: ocp.CheckpointManager, step: int, abstract_state,
            iterator: tf.data.Iterator):
  """Restores `state` laid out as `abstract_state` (ShapeDtypeStructs with shardings), and
  moves `iterator` to where it was at `step`.

  The target shardings come from the current mesh, so a checkpoint written on one mesh
  restores onto another.
  """
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=TfDataIteratorRestore(iterator)))
  if restored.data is None:  # Position not serialisable: replay the deterministic stream.
    for _ in range(step):
      next(iterator)
  return restored.state


class NoRestorableCheckpointError(RuntimeError):
  pass


def restore_fields(manager: ocp.CheckpointManager, step: int, fields: dict) -> dict:
  """Only the named TrainState fields of `step` (e.g. {'params': abstract_params}), laid out as
  the given ShapeDtypeStructs: no optimizer state or data position is read."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(fields, ocp.checkpoint_utils.construct_restore_args(fields),
                                   partial_restore=True)))
  return restored.state


def read_only_manager(workdir) -> ocp.CheckpointManager:
  """A manager that reads another run's train state as a plain pytree (metadata, any subset)."""
  return ocp.CheckpointManager(epath.Path(workdir) / 'checkpoints',
                               item_handlers={'state': ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(create=False, read_only=True))


def saved_params(manager: ocp.CheckpointManager, step: int) -> dict[str, tuple[tuple, object]]:
  """{dotted name: (key path in the saved tree, ArrayMetadata)} of a checkpoint's parameters.
  (Frozen parameters are left out of a run's checkpoints.) `manager` from read_only_manager."""
  from jaxscale import param_paths  # noqa: PLC0415
  tree = manager.item_metadata(step)['state']
  tree = getattr(tree, 'tree', tree)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree['params'])
  return {param_paths.path_name(path): (tuple(param_paths.key_name(k) for k in path), meta)
          for path, meta in flat}


def restore_latest(manager: ocp.CheckpointManager, abstract_state, iterator: tf.data.Iterator):
  """(state, step) from the newest checkpoint that restores, or (None, None) when there is none.

  A checkpoint that fails to restore is skipped with a warning naming it and the step tried
  next. Once an older one restores (so the code and config match the checkpoints and the newer
  failure is damage), the damaged ones are renamed to `<step>.corrupt`, kept for inspection and
  out of the way of the steps this run will save again. If none restores, nothing is renamed.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failed = []
  for index, step in enumerate(steps):
    try:
      state = restore(manager, step, abstract_state, iterator)
    except Exception as e:  # noqa: BLE001  (Orbax and TensorStore raise many types for bad files)
      failed.append((step, f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'))
      fallback = f'step {steps[index + 1]}' if index + 1 < len(steps) else 'none left'
      logging.warning('Checkpoint at step %d could not be restored (%s); falling back to %s.',
                      step, failed[-1][1], fallback)
      continue
    if failed:
      _set_aside(manager, [s for s, _ in failed])
    return state, step
  if failed:
    directory = manager.directory
    raise NoRestorableCheckpointError(
        f'None of the checkpoints in {directory} could be restored:\n  '
        + '\n  '.join(f'step {s}: {why}' for s, why in failed)
        + f'\nIf they were written by another version of the code or config, resume with that '
        f'version. Otherwise move them aside (mv {directory} {directory}.bad) to train from '
        'scratch in this workdir, or use a new --workdir.')
  return None, None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]):
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    for step in steps:
      target = directory / f'{step}{CORRUPT_SUFFIX}'
      suffix = 1
      while target.exists():  # An earlier damaged copy of the same step is kept too.
        target, suffix = directory / f'{step}{CORRUPT_SUFFIX}{suffix}', suffix + 1
      (directory / str(step)).rename(target)
      logging.warning('Renamed the damaged checkpoint %s to %s (kept for inspection).',
                      directory / str(step), target)
  ocp.multihost.sync_global_processes('jaxscale_set_aside_corrupt_checkpoints')
  manager.reload()
