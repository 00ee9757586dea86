"""tf.data pipelines from a `TokenSource` to batches of next-token windows.

The eval set always, and train under `config.dataset.loader='tfdata'` (the default 'grain' is
`indexed_text_pipeline`, whose checkpoints do not hold the shuffle buffers).

A window is seq_len + 1 consecutive tokens; a batch holds `inputs` = window[:-1],
`targets` = window[1:] and `weights` (1 for a real token, 0 for padding), each
[batch_size, seq_len]. Train: this process's shard, repeated forever, shuffled, packed.
Eval: a fixed, seeded sample of windows across the held-out split (`eval_windows`), the same
on every call, for every seed and number of processes.
Nothing here calls Python from inside the graph, so train iterators are checkpointable with
`tf.train.Checkpoint(iterator=iter(dataset))`.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.data import eval_windows
from jaxscale.data.sources import TokenSource

AUTOTUNE = tf.data.AUTOTUNE
# Documents mixed before packing, so every epoch packs documents in a new order and a window's
# neighbours in the stream change. Held as raw examples (checkpoints store this buffer).
DOCUMENT_SHUFFLE_BUFFER = 256


def read_config(**kwargs) -> tfds.ReadConfig:
  # No TFDS auto-cache of small datasets: a tf.data checkpoint would then hold the whole cached
  # dataset. Eval sets cache just the examples they use.
  return tfds.ReadConfig(try_autocache=False, options=deterministic(), **kwargs)


def deterministic() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def pack_across_examples(token_sequences: tf.data.Dataset, window_len: int) -> tf.data.Dataset:
  """Concatenates the sequences into one stream and cuts it into [window_len] windows.

  A `scan` carries the unfinished tail to the next sequence, so every element becomes a few
  whole windows at once (far faster than unbatching single tokens); at the end of a finite
  stream the last partial window is dropped.
  """
  def append_and_cut(tail, tokens):
    stream = tf.concat([tail, tokens], axis=0)
    used = tf.shape(stream)[0] // window_len * window_len
    return stream[used:], tf.reshape(stream[:used], [-1, window_len])
  return token_sequences.scan(tf.zeros([0], tf.int32), append_and_cut).unbatch()


def cut_within_examples(token_sequences: tf.data.Dataset, window_len: int) -> tf.data.Dataset:
  """Consecutive [window_len] windows of each sequence; each sequence's remainder is dropped."""
  def cut(tokens):
    used = tf.shape(tokens)[0] // window_len * window_len
    return tf.reshape(tokens[:used], [-1, window_len])
  return token_sequences.map(cut, num_parallel_calls=AUTOTUNE).unbatch()


def windows(source: TokenSource, examples: tf.data.Dataset, window_len: int) -> tf.data.Dataset:
  tokens = examples.map(lambda example: tf.cast(source.to_tokens(example), tf.int32),
                        num_parallel_calls=AUTOTUNE)
  if source.windows_cross_examples:
    return pack_across_examples(tokens, window_len)
  return cut_within_examples(tokens, window_len)


def next_token_batch(windows_bxw, weights_bxl):
  return {'inputs': windows_bxw[:, :-1], 'targets': windows_bxw[:, 1:], 'weights': weights_bxl}


def train_dataset(source: TokenSource, *, seq_len: int, batch_size: int, shuffle_buffer_size: int,
                  seed: int, process_index: int, process_count: int) -> tf.data.Dataset:
  """This process's infinite stream of shuffled, packed batches, deterministic for the seed."""
  file_seed, document_seed, window_seed = np.random.SeedSequence(seed).generate_state(3)
  # Each process reads its own equal share of the examples (disjoint across processes).
  split = tfds.split_for_jax_process(
      source.train_split, process_index=process_index, process_count=process_count)
  examples = source.builder.as_dataset(
      split=split, shuffle_files=True, read_config=read_config(shuffle_seed=int(file_seed)))
  # Repeating before the shuffles makes each epoch come out in a new order.
  examples = examples.repeat().shuffle(DOCUMENT_SHUFFLE_BUFFER, seed=int(document_seed))
  train_windows = windows(source, examples, seq_len + 1)
  if shuffle_buffer_size > 1:
    train_windows = train_windows.shuffle(shuffle_buffer_size, seed=int(window_seed))
  batches = train_windows.batch(batch_size, drop_remainder=True).map(
      lambda w: next_token_batch(w, tf.ones([batch_size, seq_len], tf.float32)),
      num_parallel_calls=AUTOTUNE)
  return batches.prefetch(AUTOTUNE).with_options(deterministic())


def eval_dataset(source: TokenSource, *, seq_len: int, batch_size: int, num_batches: int,
                 process_index: int, process_count: int,
                 eval_set: eval_windows.EvalWindows | None = None) -> tf.data.Dataset:
  """Exactly num_batches batches of the fixed eval set (`eval_windows`); this process's rows.

  Every process builds the same global batches (the held-out set is small) and keeps its own
  rows, so the eval set, and the eval loss, do not depend on the number of processes. Global
  batch b holds windows [b*G, (b+1)*G). `eval_set`: the set already built for these sizes.
  """
  global_batch_size = batch_size * process_count
  if eval_set is None:
    eval_set = eval_windows.eval_windows(source, seq_len=seq_len,
                                         num_windows=num_batches * global_batch_size)
  rows = [np.arange(b * global_batch_size + process_index * batch_size,
                    b * global_batch_size + (process_index + 1) * batch_size)
          for b in range(num_batches)]
  windows = np.stack([eval_set.windows[r] for r in rows])
  weights = np.stack([eval_set.weights[r] for r in rows])

  def batches():  # From numpy held here, not a graph constant (a large set would bloat it).
    for windows_bxw, weights_bxl in zip(windows, weights):
      yield next_token_batch(windows_bxw, weights_bxl)
  spec = {key: tf.TensorSpec([batch_size, seq_len], dtype)
          for key, dtype in (('inputs', tf.int32), ('targets', tf.int32), ('weights', tf.float32))}
  return tf.data.Dataset.from_generator(batches, output_signature=spec).with_options(
      deterministic())


def mean_bytes_per_token(source: TokenSource, eval_set: eval_windows.EvalWindows):
  """Mean UTF-8 bytes per target token of the whole eval set, all processes' rows together.

  None if the tokens are not text.
  """
  token_bytes = source.token_bytes
  if token_bytes is None:
    return None
  if np.all(token_bytes == token_bytes[0]):
    return float(token_bytes[0])
  total_weight = eval_set.weights.sum()
  if not total_weight:
    return None
  return float((token_bytes[eval_set.windows[:, 1:]] * eval_set.weights).sum() / total_weight)
