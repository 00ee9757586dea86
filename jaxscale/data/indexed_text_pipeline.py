"""The index-based train stream of a `TokenSource`: Grain over a TFDS array_record source.

This is the language-modelling train pipeline of `config.dataset.loader='grain'` (the default).
A checkpoint's data item is Grain's iterator state, a few integers per process (which document,
how far into it, where in the shuffle window), instead of tf.data's document and window shuffle
buffers, which grow with `shuffle_buffer_size`.

Order: this process's documents (every process_count-th of the split, from process_index) in a
new permutation each epoch (`grain.MapDataset.shuffle`, no buffer), tokenized in Grain's
threads; then, as `pipeline.windows` does under tf.data, concatenated and cut into windows of
seq_len + 1 tokens (`ConcatThenSplitIterDataset`), or for sources whose examples are streams of
their own (`windows_cross_examples=False`) cut inside each example, its remainder dropped. With
`shuffle_buffer_size` > 1 the windows are mixed in consecutive groups of that many
(`WindowShuffleIterDataset`, a new order per group). A restore re-reads from the start of the
current group and document, so resuming is exact and costs reading at most one group.
"""

from typing import Any

import grain
import numpy as np
import tensorflow as tf

from jaxscale.data import pipeline
from jaxscale.data.indexed import IndexedBatches, data_source, reader_threads
from jaxscale.data.sources import TokenSource

def train_batches(source: TokenSource, dataset_config, *, batch_size: int, seed: int,
                  process_index: int, process_count: int) -> IndexedBatches:
  """This process's infinite stream of shuffled, packed batches, deterministic for the seed."""
  seq_len = dataset_config.seq_len
  _, document_seed, window_seed = np.random.SeedSequence(seed).generate_state(3)
  examples = data_source(source.builder, source.train_split, dataset_config)
  if len(examples) < process_count:  # (Repeating an empty shard would never yield a window.)
    raise ValueError(f'The {source.train_split!r} split of {source.builder.name!r} has '
                     f'{len(examples)} examples, fewer than the {process_count} processes that '
                     'each read their own: use fewer processes or a larger dataset.')
  to_tokens = tf.function(source.to_tokens,
                          input_signature=[source.builder.info.features.get_tensor_spec()])
  documents = (grain.MapDataset.source(examples)[process_index::process_count]
               .shuffle(seed=int(document_seed))
               .repeat()  # Each epoch in a new order (the shuffle reseeds per epoch).
               .map(lambda example: to_tokens(example).numpy().astype(np.int32)))
  threads = reader_threads()
  documents = documents.to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
  windows = _windows(documents, seq_len + 1, source.windows_cross_examples)
  if dataset_config.shuffle_buffer_size > 1:
    windows = grain.experimental.WindowShuffleIterDataset(
        windows, window_size=dataset_config.shuffle_buffer_size, seed=int(window_seed))
  weights_bxl = np.ones([batch_size, seq_len], np.float32)
  batches = windows.batch(batch_size, drop_remainder=True).map(
      lambda windows_bxw: pipeline.next_token_batch(windows_bxw, weights_bxl))
  # Packing, the window shuffle and batching run in Python: a thread keeps batches ready while
  # the step runs (each buffered batch carries the state after it, so checkpoints stay exact).
  batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=2)
  spec = {'inputs': tf.TensorSpec([batch_size, seq_len], tf.int32),
          'targets': tf.TensorSpec([batch_size, seq_len], tf.int32),
          'weights': tf.TensorSpec([batch_size, seq_len], tf.float32)}
  return IndexedBatches(batches=batches, element_spec=spec)


def _windows(token_sequences: grain.IterDataset, window_len: int,
             across_examples: bool) -> grain.IterDataset:
  if across_examples:
    packed = _JsonRestorablePacking(grain.experimental.ConcatThenSplitIterDataset(
        token_sequences.map(lambda tokens: {'tokens': tokens}),
        length_struct={'tokens': window_len}))
    return packed.map(lambda element: element['tokens'])
  return grain.experimental.FlatMapIterDataset(token_sequences, _CutWithin(window_len))


class _CutWithin(grain.experimental.FlatMapTransform):
  """Consecutive [window_len] windows of each sequence; its remainder is dropped."""
  max_fan_out = 1 << 30  # Only bounds FlatMapMapDataset; the iterator form takes any count.

  def __init__(self, window_len: int):
    self.window_len = window_len

  def flat_map(self, tokens: np.ndarray) -> np.ndarray:
    used = len(tokens) // self.window_len * self.window_len
    return tokens[:used].reshape(-1, self.window_len)


class _JsonRestorablePacking(grain.IterDataset):
  """`ConcatThenSplitIterDataset` whose iterator restores a state that went through JSON.

  The packer (grain 0.2.18) tells a remainder from none by comparing its `remainder_slices` with
  the tuple (-1, -1); JSON (how checkpoints store states) gives lists back, so a state saved at
  a document boundary would restore a remainder that is not there. Tuples are put back here.
  """

  def __iter__(self) -> grain.DatasetIterator:
    return _JsonRestorablePackingIterator(self._parent.__iter__())


class _JsonRestorablePackingIterator(grain.DatasetIterator):

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]):
    slices = {feature: tuple(bounds) for feature, bounds in state['remainder_slices'].items()}
    self._parent.set_state({**state, 'remainder_slices': slices})
