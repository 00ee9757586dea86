"""Orbax checkpoints of the train state together with the input iterator position.

Each checkpoint step holds two items: `state` (the sharded TrainState, restored onto whatever
mesh the run now has) and `data` (each process's input position, so a resumed run reads exactly
the batches the interrupted one would have). The data item is either a Grain iterator's state
(`process_<i>-of-<n>.json`, a few integers: the index-based pipelines of loader='grain') or a
`tf.train.Checkpoint` of a tf.data iterator (loader='tfdata', and text classification; it holds
the pipeline's shuffle buffers). A checkpoint written by one kind resumes only with the same
kind: the other refuses with `LoaderMismatchError`, naming the loader to resume with.

Crash safety comes from Orbax: a step is written under a temporary name and renamed when
complete, so a run killed mid-save leaves no step directory a restart could pick up, and
keep-N deletes old steps only after a newer one is committed. Damage after the fact is found
by the checksum manifests of `checkpoint_integrity`: `restore_latest` falls back past verified
damage only, and every process restores the same step.
"""

import contextlib
import dataclasses
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
import tensorflow as tf
from etils import epath

from jaxscale.checkpoint import integrity
from jaxscale.config.validation import ConfigError
from jaxscale.core import param_paths


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
    """The restored iterator, None where the position must be replayed by the caller, or a
    ReadFailure (returned, not raised: see ReadFailure)."""
    prefix = self._prefix(directory)
    try:
      if tf.io.gfile.exists(prefix + REPLAY_SUFFIX):
        return None
      if _grain_state_path(directory).exists():
        return LoaderMismatch(saved='grain', current='tfdata')
      if not tf.io.gfile.exists(prefix + '.index'):
        raise FileNotFoundError(
            f'No data-iterator checkpoint for this process at {prefix}: the checkpoint was '
            'written by a run with a different number of processes.')
      integrity.retry_transient(
          lambda: tf.train.Checkpoint(iterator=args.iterator).read(prefix).assert_consumed(),
          f'the data-iterator checkpoint {prefix}')
    except Exception as e:  # noqa: BLE001
      return ReadFailure(f'{type(e).__name__}: {str(e).splitlines()[0][:300]}')
    return args.iterator


@ocp.args.register_with_handler(TfDataIteratorHandler, for_save=True)
@dataclasses.dataclass
class TfDataIteratorSave(ocp.args.CheckpointArgs):
  iterator: tf.data.Iterator


@ocp.args.register_with_handler(TfDataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class TfDataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: tf.data.Iterator


def _grain_state_path(directory: epath.Path) -> epath.Path:
  """Where Grain's handler keeps this process's iterator state."""
  return directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'


class GrainIteratorHandler(ocp.CheckpointHandler):
  """Writes each process's Grain iterator state as JSON (Grain's own Orbax handler)."""

  def __init__(self):
    self._grain = grain.checkpoint.CheckpointHandler()

  def save(self, directory: epath.Path, args: 'GrainIteratorSave'):
    self._grain.save(directory, args=grain.checkpoint.CheckpointSave(args.iterator))

  def restore(self, directory: epath.Path, args: 'GrainIteratorRestore'):
    """The iterator at the saved position, or a ReadFailure (returned, not raised)."""
    try:
      if not _grain_state_path(directory).exists():
        tf_prefix = os.fspath(directory / f'process_{jax.process_index()}_of_'
                                          f'{jax.process_count()}')
        if tf.io.gfile.exists(tf_prefix + '.index') or tf.io.gfile.exists(
            tf_prefix + REPLAY_SUFFIX):
          return LoaderMismatch(saved='tfdata', current='grain')
        raise FileNotFoundError(
            f'No data-iterator state for this process at {_grain_state_path(directory)}: the '
            'checkpoint was written by a run with a different number of processes.')
      return integrity.retry_transient(
          lambda: self._grain.restore(directory,
                                      args=grain.checkpoint.CheckpointRestore(args.iterator)),
          f'the data-iterator state in {directory}')
    except Exception as e:  # noqa: BLE001
      return ReadFailure(f'{type(e).__name__}: {str(e).splitlines()[0][:300]}')

  def metadata(self, directory: epath.Path):
    del directory
    return None


@ocp.args.register_with_handler(GrainIteratorHandler, for_save=True)
@dataclasses.dataclass
class GrainIteratorSave(ocp.args.CheckpointArgs):
  iterator: grain.DatasetIterator


@ocp.args.register_with_handler(GrainIteratorHandler, for_restore=True)
@dataclasses.dataclass
class GrainIteratorRestore(ocp.args.CheckpointArgs):
  iterator: grain.DatasetIterator


def _data_args(iterator, for_save: bool) -> ocp.args.CheckpointArgs:
  if isinstance(iterator, grain.DatasetIterator):
    return (GrainIteratorSave if for_save else GrainIteratorRestore)(iterator)
  return (TfDataIteratorSave if for_save else TfDataIteratorRestore)(iterator)


@dataclasses.dataclass
class ReadFailure:
  """What an item handler returns instead of raising, so every process still reaches Orbax's
  barrier after a restore and all of them learn together that one failed."""
  error: str


@dataclasses.dataclass
class LoaderMismatch:
  """A data item written by the other kind of input pipeline (returned, like ReadFailure)."""
  saved: str    # config.dataset.loader of the run that wrote it.
  current: str


class LoaderMismatchError(ConfigError):
  """The checkpoint's input position was written by the other loader (the CLI prints it as a
  config error: one line saying which flag to pass)."""


class RetryingStateHandler(ocp.StandardCheckpointHandler):
  """The train state's handler; a restore retries a read that fails (maybe transiently), then
  returns a ReadFailure rather than raising."""

  def restore(self, directory, item=None, args=None):
    try:
      return integrity.retry_transient(lambda: super(RetryingStateHandler, self).restore(
          directory, item=item, args=args), f'the train state in {directory}')
    except Exception as e:  # noqa: BLE001  (TensorStore, OS and Orbax errors alike)
      return ReadFailure(f'{type(e).__name__}: {str(e).splitlines()[0][:300]}')


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
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item, handler, args_types in (
      ('state', RetryingStateHandler(), (ocp.args.StandardSave, ocp.args.StandardRestore)),
      ('data', TfDataIteratorHandler(), (TfDataIteratorSave, TfDataIteratorRestore)),
      ('data', GrainIteratorHandler(), (GrainIteratorSave, GrainIteratorRestore))):
    for args_type in args_types:
      registry.add(item, args_type, handler)
  return ocp.CheckpointManager(workdir / 'checkpoints', options=options,
                               handler_registry=registry)


def save(manager: ocp.CheckpointManager, step: int, state, iterator, force: bool = False) -> bool:
  """`iterator`: a tf.data iterator or a grain.DatasetIterator."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=_data_args(iterator, for_save=True)), force=force)


class CheckpointSaveError(RuntimeError):
  pass


class Saver:
  """Saves through `manager`, surfaces a failed save at the next step boundary, and writes each
  finished step's checksum manifest in the background.

  An asynchronous save that fails in Orbax's background thread is only reported by the next
  `wait_until_finished` (or the next save, a whole interval later); `check` asks as soon as the
  save is done, so training never goes on for long without the checkpoint it believes it has.
  The manifest is hashed only once Orbax has finalized the step, and is finished before the next
  save (whose keep-N may delete old steps) or when `check(wait=True)` returns.
  """

  def __init__(self, manager: ocp.CheckpointManager, to_checkpoint=None):
    self.manager = manager
    self._to_checkpoint = to_checkpoint or (lambda state: state)  # The fields to save.
    self._pending_step = None
    self._manifest = integrity.ManifestWriter()

  def save(self, step: int, state, iterator):
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
    self._manifest.start(epath.Path(self.manager.directory) / str(self._pending_step))
    self._pending_step = None
    if wait:
      self._manifest.wait()

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


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, iterator):
  """Restores `state` laid out as `abstract_state` (ShapeDtypeStructs with shardings), and
  moves `iterator` to where it was at `step`.

  The target shardings come from the current mesh, so a checkpoint written on one mesh
  restores onto another. A read that still fails after retries on any process raises
  CheckpointReadError on every process.
  """
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=_data_args(iterator, for_save=False)))
  if isinstance(restored.data, LoaderMismatch):  # The same on every process: same config.
    raise LoaderMismatchError(
        f'The checkpoint of step {step} in {manager.directory} holds the input position of the '
        f"{restored.data.saved!r} loader, but this run uses config.dataset.loader="
        f"{restored.data.current!r}. Resume with --config.dataset.loader={restored.data.saved} "
        '(with --config.allow_config_change=True if the config recorded in the workdir says '
        'otherwise: text datasets trained through tf.data whatever it said until they had a Grain '
        'pipeline), or start a new --workdir to train with the other loader.')
  failures = [f'{name}: {item.error}' for name, item in (('state', restored.state),
                                                         ('data', restored.data))
              if isinstance(item, ReadFailure)]
  if integrity.agreed(int(bool(failures))):
    mine = '; '.join(failures) or 'this process read it; another one could not'
    raise CheckpointReadError(
        f'Reading the checkpoint of step {step} in {manager.directory} failed after '
        f'{integrity.READ_ATTEMPTS} attempts ({mine}). Its files are not known to be damaged, '
        'so nothing was moved or deleted: rerun to retry. If it keeps failing and the files '
        'were written by another version of the code or config, resume with that version.')
  if restored.data is None:  # Position not serialisable: replay the deterministic stream.
    for _ in range(step):
      next(iterator)
  return restored.state


class CheckpointReadError(RuntimeError):
  pass


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
  tree = manager.item_metadata(step)['state']
  tree = getattr(tree, 'tree', tree)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree['params'])
  return {param_paths.path_name(path): (tuple(param_paths.key_name(k) for k in path), meta)
          for path, meta in flat}


def _agreed_steps(manager: ocp.CheckpointManager) -> list[int]:
  """Process 0's list of finished steps, newest first, on every process (listings of a shared
  file system may briefly differ between hosts)."""
  steps = sorted(manager.all_steps(), reverse=True)
  if jax.process_count() == 1:
    return steps
  from jax.experimental import multihost_utils  # noqa: PLC0415
  count = int(multihost_utils.broadcast_one_to_all(np.asarray(len(steps), np.int64)))
  padded = np.full(count, -1, np.int64)
  padded[:min(count, len(steps))] = steps[:count]
  return [int(s) for s in multihost_utils.broadcast_one_to_all(padded)]


def restore_latest(manager: ocp.CheckpointManager, abstract_state, iterator):
  """(state, step) from the newest checkpoint without verified damage, or (None, None) when
  there is none; every process takes the same decision.

  Each step's files are checked against their checksum manifest (checkpoint_integrity). Verified
  damage is skipped with a warning naming it and the step tried next; once an older one restores,
  the damaged ones are renamed to `<step>.corrupt`, kept for inspection and out of the way of the
  steps this run will save again. A read that keeps failing (possibly transient) stops the run
  with CheckpointReadError and moves nothing.
  """
  steps = _agreed_steps(manager)
  directory = epath.Path(manager.directory)
  damaged = []
  for index, step in enumerate(steps):
    verdict, why = integrity.local_verdict(directory / str(step))
    agreed = integrity.agreed(verdict)
    if agreed == integrity.UNREADABLE:
      raise CheckpointReadError(
          f'Could not read the checkpoint of step {step} in {directory} to verify it '
          f'({why if verdict == agreed else "on another process"}). This may be transient, so '
          'nothing was moved or deleted: rerun to retry.')
    if agreed == integrity.DAMAGED:
      damaged.append((step, why if verdict == agreed else 'damage found by another process'))
      fallback = f'step {steps[index + 1]}' if index + 1 < len(steps) else 'none left'
      logging.warning('Checkpoint at step %d is damaged (%s); falling back to %s.', step,
                      damaged[-1][1], fallback)
      continue
    state = restore(manager, step, abstract_state, iterator)
    if damaged:
      logging.warning('Restored step %d instead of the damaged checkpoint(s) at step %s.', step,
                      ', '.join(str(s) for s, _ in damaged))
      _set_aside(manager, [s for s, _ in damaged])
    return state, step
  if damaged:
    raise NoRestorableCheckpointError(
        f'Every checkpoint in {directory} is damaged:\n  '
        + '\n  '.join(f'step {s}: {why}' for s, why in damaged)
        + f'\nMove them aside (mv {directory} {directory}.bad) to train from scratch in this '
        'workdir, or use a new --workdir.')
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
