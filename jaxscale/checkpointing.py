"""Orbax checkpoints of the train state together with the tf.data iterator position.

Each checkpoint step holds two items: `state` (the sharded TrainState, restored onto whatever
mesh the run now has) and `data` (each process's tf.data iterator, so a resumed run reads
exactly the batches the interrupted one would have).
"""

import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
import tensorflow as tf
from etils import epath


REPLAY_SUFFIX = '.replay'


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
