"""tf.data pipelines from a `TextClassSource` to batches of token sequences and one-hot labels.

A batch holds `inputs` (int32 [B, L]: the source's CLS id, then the text's tokens cut to L - 1,
then its PAD id), `input_mask` (int32 [B, L]: 1 for CLS and the tokens, 0 for padding),
`labels` (float32 [B, K], one-hot) and `weights` (float32 [B]); L = config.dataset.seq_len.
Train: this process's shard (of `config.dataset.train_fraction` of the labels, see `subsets`),
repeated forever and shuffled; deterministic for the seed, and with no Python in the graph, so
the iterator is checkpointable with `tf.train.Checkpoint(iterator=iter(dataset))`.
Eval: the first examples of the held-out split in stored order, the same on every call; rows
past its end have weight 0 (see `eval_dataset`).
"""

import numpy as np
import tensorflow as tf

from jaxscale.data import subsets
from jaxscale.data.pipeline import deterministic
from jaxscale.data.sources import TextClassSource

AUTOTUNE = tf.data.AUTOTUNE


def encode(source: TextClassSource, text, seq_len: int):
  """`inputs` and `input_mask` (int32 [seq_len]) of one text."""
  tokens = tf.cast(source.to_tokens(text), tf.int32)[:seq_len - 1]
  inputs = tf.concat([[source.cls_id], tokens], axis=0)
  num_real = tf.shape(inputs)[0]
  inputs = tf.pad(inputs, [[0, seq_len - num_real]], constant_values=source.pad_id)
  return {'inputs': tf.ensure_shape(inputs, [seq_len]),
          'input_mask': tf.sequence_mask(num_real, seq_len, dtype=tf.int32)}


def _example(source: TextClassSource, example, seq_len: int):
  return {**encode(source, example[source.text_key], seq_len),
          'labels': tf.one_hot(example['label'], source.num_classes, dtype=tf.float32),
          'weights': tf.constant(1.0)}


def train_dataset(source: TextClassSource, dataset_config, *, batch_size: int, seed: int,
                  process_index: int, process_count: int) -> tf.data.Dataset:
  """This process's infinite stream of shuffled batches, deterministic for the seed."""
  file_seed, shuffle_seed = np.random.SeedSequence(seed).generate_state(2)
  examples = subsets.train_examples(
      source.builder, source.train_split, fraction=dataset_config.train_fraction,
      file_seed=file_seed, process_index=process_index, process_count=process_count,
      classes=source.classes, holdout=source.holdout)
  # Repeating before the shuffle makes each epoch come out in a new order. The buffer holds the
  # raw texts (what a checkpoint stores), tokenized only after it.
  examples = examples.repeat()
  if dataset_config.shuffle_buffer_size > 1:
    examples = examples.shuffle(dataset_config.shuffle_buffer_size, seed=int(shuffle_seed))
  batches = examples.map(
      lambda example: _example(source, example, dataset_config.seq_len),
      num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=True)
  return batches.prefetch(AUTOTUNE).with_options(deterministic())


def eval_dataset(source: TextClassSource, *, seq_len: int, batch_size: int, num_batches: int,
                 process_index: int, process_count: int) -> tf.data.Dataset:
  """Exactly num_batches batches of the fixed held-out set; this process's rows of each.

  As for images (`image_pipeline.eval_dataset`): the global eval set is the split's first
  num_batches * global_batch examples in stored order, process p holding rows [p*B, (p+1)*B) of
  each global batch, so it does not depend on the number of processes. Every example of the set
  counts once; with num_batches >= `Datasets.info['num_eval_batches_for_whole_split']` that is
  the whole split. Rows past the
  end of the split have weight 0 and zero labels; their inputs are those of an empty text (CLS,
  then PAD), so that no row is all padding.
  """
  global_batch_size = batch_size * process_count
  # Only those classes (relabelled), if the source keeps some.
  examples = subsets.eval_examples(source)
  mine = examples.take(num_batches * global_batch_size).enumerate().filter(
      lambda index, _: index % global_batch_size // batch_size == process_index)
  real = mine.map(lambda _, example: _example(source, example, seq_len),
                  num_parallel_calls=AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      **encode(source, tf.constant(''), seq_len),
      'labels': tf.zeros([source.num_classes]),
      'weights': tf.constant(0.0)}).repeat()
  batches = real.concatenate(padding).take(num_batches * batch_size).batch(
      batch_size, drop_remainder=True)
  return batches.cache().prefetch(AUTOTUNE).with_options(deterministic())
