"""The index-based train stream of an `ImageSource`: Grain order over a TFDS array_record source.

This is the image train pipeline of `config.dataset.loader='grain'` (the default). Its state is
the number of batches this process has read (Grain's iterator state, `{'next_index': n}`), so a
checkpoint holds a few integers per process instead of tf.data's shuffle buffer (for ImageNet,
16,384 encoded JPEGs: ~1.8 GB per host and save).

Order: the kept train examples (see `subsets`) in one global permutation per epoch
(`grain.MapDataset.shuffle`, reseeded each epoch; no buffer), or in stored order when
`shuffle_buffer_size` <= 1 (its size is otherwise unused: the permutation covers the whole
split). Global batch b holds stream positions [b*G, (b+1)*G) and process p reads its rows
[p*B, (p+1)*B), so processes read disjoint examples within an epoch and the global batch is the
same for any number of processes. Randomness: each image's augmentation is seeded from (run
seed, its global position), each batch's mixup/cutmix from (run seed, process, batch index).
Any batch is thus a pure function of its index, and resuming at batch n is exact.

Grain does the order, sharding, worker threads, prefetch and state. The pixels stay in
TensorFlow (`image_pipeline.train_preprocess`: JPEG decoding of the crop only, RandAugment,
mixup/cutmix), run as one `tf.function` per batch: the ops release the GIL, so Grain's threads
decode batches in parallel. Random access needs the split in array_record (TFDS's
`as_data_source`); the eval set and label reads still go through tf.data (`as_dataset`), which
reads tfrecord, so a prepared dataset holds both (see `indexed.data_source`).
"""


import grain
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.data import image_pipeline, subsets
from jaxscale.data.indexed import IndexedBatches, data_source, reader_threads
from jaxscale.data.sources import ImageSource

_ENCODED = {'image': tfds.decode.SkipDecoding()}


def train_batches(source: ImageSource, dataset_config, *, batch_size: int, seed: int,
                  process_index: int, process_count: int) -> IndexedBatches:
  """This process's shuffled, augmented batches, deterministic for the seed."""
  examples = data_source(source.builder, source.train_split, dataset_config, decoders=_ENCODED)
  record_keys, label_of = _kept_examples(source, dataset_config.train_fraction, len(examples))
  order = grain.MapDataset.range(len(record_keys))
  if dataset_config.shuffle_buffer_size > 1:
    order = order.shuffle(seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
  order = order.repeat()  # Each epoch in a new order (the shuffle reseeds per epoch).
  make_batch = _batch_function(source, dataset_config, batch_size, seed, process_index)
  global_batch_size = batch_size * process_count

  def read_batch(positions: np.ndarray) -> dict[str, np.ndarray]:
    keys = [int(record_keys[order[int(position)]]) for position in positions]
    read = [examples[key] for key in keys]
    batch = make_batch(tf.constant([example['image'] for example in read]),
                       tf.constant(label_of([example['label'] for example in read]), tf.int64),
                       tf.constant(positions, tf.int64),
                       tf.constant(int(positions[0]) // global_batch_size, tf.int64))
    return {name: value.numpy() for name, value in batch.items()}

  # Rows [p*B, (p+1)*B) of each global batch of positions.
  positions = grain.MapDataset.range(len(order)).batch(batch_size)
  batches = positions[process_index::process_count].map(read_batch)
  # Batches prepared at once, each by one thread (TensorFlow parallelises within a batch as
  # well); as many are buffered ahead: at 224 px each float32 batch of 128 images is 77 MB.
  threads = reader_threads()
  element_spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                                       make_batch.get_concrete_function().structured_outputs)
  read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
  return IndexedBatches(batches=batches.to_iter_dataset(read_options), element_spec=element_spec)


def _kept_examples(source: ImageSource, fraction: float, num_examples: int):
  """(record keys of the kept train examples, their labels' map to the run's label ids)."""
  if fraction == 1 and not source.classes and not source.holdout:
    return np.arange(num_examples), lambda labels: np.asarray(labels, np.int64)
  labels = subsets.split_labels(source.builder, source.train_split)
  keys = np.flatnonzero(subsets.kept_mask(labels, fraction, source.classes, source.holdout))
  if not source.classes:
    return keys, lambda labels: np.asarray(labels, np.int64)
  mapping = subsets.label_map(source.classes, subsets.num_source_classes(source.builder))
  return keys, lambda labels: mapping[np.asarray(labels, np.int64)]


def _batch_function(source: ImageSource, dataset_config, batch_size: int, seed: int,
                    process_index: int):
  """A tf.function (encoded images, labels, global positions, batch index) -> batch."""
  preprocess = image_pipeline.train_preprocess(source, dataset_config)
  size, num_classes = dataset_config.image_size, source.num_classes
  image_seed = image_pipeline.stateless_seed(seed, 1)
  mix_seed = image_pipeline.stateless_seed(seed, process_index, 2)
  example_spec = {'image': tf.TensorSpec([size, size, 3], tf.float32),
                  'labels': tf.TensorSpec([num_classes], tf.float32),
                  'weights': tf.TensorSpec([], tf.float32)}

  @tf.function(input_signature=[tf.TensorSpec([batch_size], tf.string),
                                tf.TensorSpec([batch_size], tf.int64),
                                tf.TensorSpec([batch_size], tf.int64),
                                tf.TensorSpec([], tf.int64)])
  def make_batch(encoded, labels, positions, batch_index):
    def one(example):
      image, label, position = example
      return preprocess({'image': image, 'label': label},
                        tf.random.experimental.stateless_fold_in(image_seed, position))
    batch = tf.map_fn(one, (encoded, labels, positions), fn_output_signature=example_spec)
    if image_pipeline.mixes(dataset_config):
      batch = image_pipeline.mix(
          batch, dataset_config, tf.random.experimental.stateless_fold_in(mix_seed, batch_index))
    return batch
  return make_batch
