"""What the index-based (Grain) train pipelines share: random access to a split, and the stream.

Under `config.dataset.loader='grain'` (the default) train examples are read by their index in
the split (TFDS `as_data_source`, array_record files) instead of through tf.data, so a
checkpoint's data item is the Grain iterator's state: a few integers per process instead of
tf.data's shuffle buffers. `indexed_image_pipeline` and `indexed_text_pipeline` build the
streams; the eval sets stay tf.data (read in stored order, never checkpointed).
"""

import dataclasses
import os

import grain
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.data import prepare


def reader_threads(limit: int = 16) -> int:
  """Grain worker threads for reading and preparing examples: one per core, up to `limit`
  (the TensorFlow ops they run release the GIL)."""
  return max(1, min(limit, os.cpu_count() or 1))


class ArrayRecordMissingError(ValueError):
  """The train split is prepared, but not in a format that can be read by index. (Not a
  FileNotFoundError: `input_errors` would explain that as a dataset that is not prepared.)"""


@dataclasses.dataclass(frozen=True)
class IndexedBatches:
  """This process's infinite stream of train batches (numpy dicts).

  `iter()` gives a `grain.DatasetIterator` whose `get_state()` is a small JSON-able dict and
  whose `set_state` resumes there exactly (the checkpoint's data item).
  """
  batches: grain.IterDataset
  element_spec: dict[str, tf.TensorSpec]  # As tf.data's, so callers treat both alike.

  def __iter__(self) -> grain.DatasetIterator:
    return iter(self.batches)

  def as_numpy_iterator(self) -> grain.DatasetIterator:
    return iter(self)


def data_source(builder: tfds.core.DatasetBuilder, split: str, dataset_config, decoders=None):
  """Random access to the split's examples, read from its array_record files."""
  prepared_format = builder.info.file_format
  prepare.recorded_file_formats(builder)  # Lets as_data_source see every prepared format.
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except NotImplementedError as e:  # TFDS: no random-access format among the prepared ones.
    if not (builder.data_path / 'dataset_info.json').exists():
      # Not prepared at all (TFDS checks the format first): as tf.data would say, which
      # `input_errors` explains with how to prepare it.
      raise FileNotFoundError(f'Could not find data in {builder.data_dir}.') from e
    raise ArrayRecordMissingError(
        f'Dataset {builder.name!r} in {builder.data_dir} is stored as '
        f'{prepared_format.value if prepared_format else "an unknown format"} only, but the '
        f"'grain' loader (config.dataset.loader={dataset_config.loader!r}) reads train examples "
        'by index, which needs array_record files. Add them beside the existing ones with '
        f'`python -m jaxscale.data.add_array_record {builder.data_dir}` (the eval set still '
        "reads the tfrecord files), or set --config.dataset.loader=tfdata to train through "
        'tf.data (whose checkpoints store the shuffle buffers).') from e
  finally:
    # as_data_source switches the builder to array_record; its as_dataset (eval, labels) must
    # keep reading the format it was prepared in.
    if prepared_format is not None and builder.info.file_format != prepared_format:
      builder.info.set_file_format(prepared_format, override=True, override_if_initialized=True)
