"""The fixed LM eval set: a seeded sample of windows drawn across the whole held-out split.

Every document of the split is a candidate where it has at most MAX_DOCUMENTS (python_stdlib's
validation split has about 86), else a seeded sample of MAX_DOCUMENTS of them. The
`num_windows` windows (num_eval_batches x global batch, as many as a fixed eval set ever had, so
eval costs the same) are shared out among them: one for each document (or, with fewer windows
than documents, one for each of a seeded sample of them), the rest in proportion to each
document's length, never more than it holds without overlap. Inside a document, its windows are
seeded choices among its consecutive [seq_len + 1] slots after a seeded shift; a document shorter
than a window gives one window padded with weight 0. Windows never cross documents, so each
remembers the document it came from: the clusters of the eval loss's standard error
(`jaxscale.train.evaluation.clustered_stderr`).

Only the dataset and EVAL_SEED decide the set: never the run seed, the batch split or the number
of processes (every process builds the same global windows and keeps its rows).
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.data.sources import TokenSource

# Deliberately not the run seed: runs of any seed are measured on the same windows.
EVAL_SEED = 0
# Documents the set draws from at most; a split with more is sampled (seeded) down to this many.
MAX_DOCUMENTS = 1000


@dataclasses.dataclass(frozen=True)
class EvalWindows:
  """The global eval set, in the order batches take it."""
  windows: np.ndarray       # int32 [num_windows, seq_len + 1]
  weights: np.ndarray       # float32 [num_windows, seq_len]: 1 per real target, 0 for padding.
  document_ids: np.ndarray  # int64 [num_windows]: index of the window's document, -1 padding.
  num_documents: int        # Documents the windows draw from.


def eval_windows(source: TokenSource, *, seq_len: int, num_windows: int) -> EvalWindows:
  documents = _read_documents(source)
  return sample_windows(documents, seq_len=seq_len, num_windows=num_windows)


def sample_windows(documents: list[np.ndarray], *, seq_len: int, num_windows: int) -> EvalWindows:
  """`num_windows` windows of seq_len + 1 tokens drawn from `documents` (token arrays) as the
  module says; padding windows (weight 0, document -1) at the end if the documents run out."""
  window_len = seq_len + 1
  rng = np.random.default_rng(EVAL_SEED)
  lengths = np.array([len(d) for d in documents], np.int64)
  usable = np.flatnonzero(lengths >= 2)  # A document of one token has no target.
  counts = np.zeros(len(documents), np.int64)
  counts[usable] = _allocate(lengths[usable], window_len, num_windows, rng)
  windows = np.zeros([num_windows, window_len], np.int32)
  weights = np.zeros([num_windows, seq_len], np.float32)
  document_ids = np.full([num_windows], -1, np.int64)
  row = 0
  for index in np.flatnonzero(counts):
    tokens, count = documents[index], int(counts[index])
    if len(tokens) < window_len:  # One padded window: the whole document.
      windows[row, :len(tokens)] = tokens
      weights[row, :len(tokens) - 1] = 1
      document_ids[row] = index
      row += 1
      continue
    slots = len(tokens) // window_len
    shift = rng.integers(0, len(tokens) - slots * window_len + 1)
    for slot in np.sort(rng.choice(slots, count, replace=False)):
      start = shift + slot * window_len
      windows[row] = tokens[start:start + window_len]
      weights[row] = 1
      document_ids[row] = index
      row += 1
  return EvalWindows(windows, weights, document_ids, int(np.count_nonzero(counts)))


def _allocate(lengths: np.ndarray, window_len: int, num_windows: int,
              rng: np.random.Generator) -> np.ndarray:
  """Windows per document: one each, the rest in proportion to length, capped by capacity."""
  capacity = np.maximum(1, lengths // window_len)
  counts = np.zeros(len(lengths), np.int64)
  if num_windows < len(lengths):  # Fewer windows than documents: a seeded sample, one each.
    counts[rng.choice(len(lengths), num_windows, replace=False)] = 1
    return counts
  counts[:] = 1
  remaining = min(num_windows, int(capacity.sum())) - len(lengths)
  while remaining > 0:
    room = capacity - counts
    open_ = np.flatnonzero(room > 0)
    share = remaining * lengths[open_] / lengths[open_].sum()
    add = np.minimum(np.floor(share).astype(np.int64), room[open_])
    if not add.any():  # Every share under one window: the largest remainders get one each.
      add[np.argsort(-share, kind='stable')[:remaining]] = 1
    counts[open_] += add
    remaining -= int(add.sum())
  return counts


def _read_documents(source: TokenSource) -> list[np.ndarray]:
  """The token arrays of the split's documents, or of a seeded sample of MAX_DOCUMENTS of them
  (in stored order)."""
  builder = source.builder
  examples = builder.as_dataset(split=source.eval_split, shuffle_files=False,
                                read_config=_read_config())
  split_info = builder.info.splits[source.eval_split] if source.eval_split in (
      builder.info.splits) else None
  num_examples = split_info.num_examples if split_info is not None else 0
  if num_examples > MAX_DOCUMENTS:
    chosen = np.zeros([num_examples], bool)
    chosen[np.random.default_rng(EVAL_SEED).choice(num_examples, MAX_DOCUMENTS,
                                                   replace=False)] = True
    examples = examples.enumerate().filter(
        lambda index, _: tf.gather(tf.constant(chosen), index)).map(lambda _, example: example)
  tokens = examples.map(lambda example: tf.cast(source.to_tokens(example), tf.int32),
                        num_parallel_calls=tf.data.AUTOTUNE)
  return list(tokens.as_numpy_iterator())


def _read_config() -> tfds.ReadConfig:
  options = tf.data.Options()
  options.deterministic = True
  return tfds.ReadConfig(try_autocache=False, options=options)
