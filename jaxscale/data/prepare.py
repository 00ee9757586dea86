"""Builds a local TFDS dataset once, even when several processes ask for it at the same time.

Parallel sweep runs, or every host of a multi-host job on a shared filesystem, may all find the
dataset missing and build it together; TFDS then fails in all but the first to finish
("FileExistsError: Cannot rename .../incomplete..."). An exclusive lock file beside the dataset's
directory lets one process build while the others wait and then read what it built.
"""

import contextlib
import fcntl
import os

from absl import logging
from etils import epath
import tensorflow_datasets as tfds


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Builds the builder's dataset unless it is already there; returns the (prepared) builder."""
  if not _is_local(builder.data_path):
    # flock means nothing on object stores (gs://, s3://): build without a lock. Concurrent
    # builders there must be avoided by the caller (e.g. prepare once with `tfds build`).
    builder.download_and_prepare()
    return builder
  if not builder.data_path.exists():
    with _exclusive_lock(_lock_path(builder.data_path), holder=f'building {builder.data_dir}'):
      if not builder.data_path.exists():  # Still missing: no other process built it meanwhile.
        builder.download_and_prepare()
        return builder
  # Built by another process, maybe after this builder was made and found nothing to read:
  # read its splits, sizes and metadata as a fresh builder would.
  builder.info.read_from_directory(builder.data_dir)
  return builder


def _is_local(path: epath.Path) -> bool:
  return '://' not in os.fspath(path)


def _lock_path(data_path: epath.Path) -> epath.Path:
  """`<data_dir>/<name>/<config>/<version>.lock`, beside the dataset's directory.

  Not a valid version name, so TFDS never takes it for a version of the dataset.
  """
  return data_path.parent / f'{data_path.name}.lock'


@contextlib.contextmanager
def _exclusive_lock(path: epath.Path, holder: str):
  """Holds an exclusive flock on `path` (created if needed); the OS drops it if the process dies.

  `holder` says what the process holding the lock is doing, for the one line a waiter logs.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'a') as lock_file:
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('Waiting for another process to finish %s (lock %s).', holder, path)
      fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def add_array_record(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Adds array_record copies of a prepared dataset's tfrecord shards, unless already there.

  Index-based train pipelines read examples by position (`as_data_source`, array_record) while
  tf.data reads them from tfrecord (`as_dataset`), so the embedded datasets keep both. (TFDS's
  own `tfds convert_format` does the same but needs Apache Beam installed.)
  """
  if _has_array_record(builder):
    return builder
  with _exclusive_lock(_lock_path(builder.data_path), holder=f'converting {builder.data_dir}'):
    builder.info.read_from_directory(builder.data_dir)
    if not _has_array_record(builder):  # No other process converted it meanwhile.
      for split in builder.info.splits.values():
        for tfrecord_path in split.filepaths:
          _copy_as_array_record(tfrecord_path)
      builder.info.add_alternative_file_format(ARRAY_RECORD)
      builder.info.write_to_directory(builder.data_dir)
  return builder


ARRAY_RECORD = tfds.core.file_adapters.FileFormat.ARRAY_RECORD


def _has_array_record(builder: tfds.core.DatasetBuilder) -> bool:
  return ARRAY_RECORD in recorded_file_formats(builder)


def recorded_file_formats(builder: tfds.core.DatasetBuilder) -> set:
  """The formats the prepared dataset holds, as `builder.info.available_file_formats()`.

  TFDS 4.9.10's `read_from_directory` (a code builder of an already prepared dataset) loads the
  recorded alternative formats into the info proto only, so `available_file_formats` (which
  `as_data_source` asks) misses them; this adds them to the info first.
  """
  info = builder.info
  for name in set(info.as_proto.alternative_file_formats) - {
      f.value for f in info.available_file_formats()}:
    info.add_alternative_file_format(name)
  return info.available_file_formats()


def _copy_as_array_record(tfrecord_path: epath.Path):
  """Writes the shard's records, in order, to its array_record name (TFDS's naming template)."""
  import tensorflow as tf  # noqa: PLC0415
  tfrecord_path = epath.Path(tfrecord_path)
  target = tfrecord_path.parent / tfrecord_path.name.replace('.tfrecord-', '.array_record-')
  partial = target.parent / f'{target.name}.incomplete'
  records = tf.data.TFRecordDataset(os.fspath(tfrecord_path)).as_numpy_iterator()
  tfds.core.file_adapters.ADAPTER_FOR_FORMAT[ARRAY_RECORD].write_examples(
      partial, ((None, record) for record in records))
  partial.replace(target)  # Only complete shards carry the name TFDS reads.
