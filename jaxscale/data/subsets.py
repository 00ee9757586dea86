"""The labelled train examples a run reads: the whole train split, or a stratified fraction of it.

`config.dataset.train_fraction` < 1 finetunes on a fixed share of the labels (1%, 10%, ...): each
class keeps max(1, round(fraction * its count)) examples, so every class is present and the class
mix is the split's. The choice depends on the fraction only, never on the run seed, so runs with
different seeds compare on the same labels; and it is nested: each class's examples are taken in
one fixed random order, so the 1% subset lies inside the 10% one.

`config.dataset.classes` keeps only some labels (train and eval), relabelled 0..k-1 in the order
given (`keep_classes`). Each class's examples are taken in the same order whichever classes are
kept, so a fraction of a class subset holds the same examples of each class as that fraction of
the whole split.

A dataset without a validation split (digits, CIFAR) holds out a stratified share of train as
one (`holdout_mask`, fixed by HOLDOUT_SEED): the default eval split, never trained on whatever
split a run scores, so the test split is scored only when a config asks for it
(`dataset.eval_split='test'`).
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.data.pipeline import deterministic, read_config

# Fixes the order examples are taken in; deliberately not the run seed (see above).
SUBSET_SEED = 0
# Fixes which train examples a dataset without a validation split holds out as one (`holdout`).
HOLDOUT_SEED = 1
# The name of that held-out part of train (what `dataset.eval_split` resolves to by default).
CARVED_SPLIT = 'validation'
# The share of train held out as that split: digits 149 of 1,497 images, CIFAR 5,000 of 50,000,
# imdb_reviews 2,500 of 25,000 reviews.
HOLDOUT = 0.1
# A subset up to this many examples is read from the split once and then kept in memory (still
# encoded): otherwise every epoch of a 1% subset would read the whole split again, 100 times the
# examples it keeps, and starve the step. Larger subsets are re-read each epoch.
CACHE_MAX_EXAMPLES = 20_000
_LABEL_BATCH = 4096


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = SUBSET_SEED) -> np.ndarray:
  """Sorted indices of the kept examples: max(1, round(fraction * n_c)) of each class c."""
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction={fraction} must be in (0, 1].')
  # Not sklearn's stratified splitters: they may keep no example of a rare class.
  order = np.random.default_rng(seed).permutation(len(labels))
  kept = []
  for label in np.unique(labels):
    of_class = order[labels[order] == label]  # This class's examples, in the fixed order.
    kept.append(of_class[:max(1, round(fraction * len(of_class)))])
  return np.sort(np.concatenate(kept))


# (data path, split) -> labels: a run reads them once (a full pass over the split).
_LABELS: dict[tuple[str, str], np.ndarray] = {}


def split_labels(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
  """int64 [num_examples]: the split's labels in stored order (images are left undecoded)."""
  key = (str(builder.data_path), split)
  if key not in _LABELS:
    undecoded = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
                 if isinstance(feature, tfds.features.Image)}
    examples = builder.as_dataset(split=split, shuffle_files=False, decoders=undecoded,
                                  read_config=read_config())
    labels = examples.map(lambda example: example['label']).batch(_LABEL_BATCH)
    _LABELS[key] = np.concatenate([np.zeros([0], np.int64), *labels.as_numpy_iterator()])
  return _LABELS[key]


def label_map(classes, num_source_classes: int) -> np.ndarray:
  """int64 [num_source_classes]: each source label's position in `classes`, -1 if not kept."""
  mapping = np.full([num_source_classes], -1, np.int64)
  mapping[list(classes)] = np.arange(len(classes))
  return mapping


def num_source_classes(builder: tfds.core.DatasetBuilder) -> int:
  return builder.info.features['label'].num_classes


def keep_classes(examples: tf.data.Dataset, builder: tfds.core.DatasetBuilder,
                 classes) -> tf.data.Dataset:
  """The examples whose `label` is in `classes`, relabelled to its position there; () = all."""
  if not classes:
    return examples
  mapping = tf.constant(label_map(classes, num_source_classes(builder)))
  relabelled = examples.map(lambda example: {**example, 'label': tf.gather(mapping,
                                                                           example['label'])})
  return relabelled.filter(lambda example: example['label'] >= 0)


def holdout_mask(labels: np.ndarray, holdout: float) -> np.ndarray:
  """bool [num_examples]: the train examples held out as the validation split of a dataset that
  has none: a stratified `holdout` share of each class, fixed by HOLDOUT_SEED (the same for every
  run and seed); all False for holdout 0."""
  mask = np.zeros(len(labels), bool)
  if holdout:
    mask[stratified_subset(labels, holdout, seed=HOLDOUT_SEED)] = True
  return mask


def kept_mask(labels: np.ndarray, fraction: float, classes=(), holdout: float = 0.0) -> np.ndarray:
  """bool [num_examples]: the train examples of `classes` (() = all) in the `fraction` subset of
  those not held out (`holdout_mask`)."""
  candidates = np.flatnonzero(~holdout_mask(labels, holdout))
  mask = np.zeros(len(labels), bool)
  mask[candidates[stratified_subset(labels[candidates], fraction)] if fraction < 1
       else candidates] = True
  if classes:
    mask &= np.isin(labels, list(classes))
  return mask


def num_kept(builder: tfds.core.DatasetBuilder, split: str, fraction: float, classes=(),
             holdout: float = 0.0) -> int:
  if fraction == 1 and not classes and not holdout:
    return builder.info.splits[split].num_examples
  return int(kept_mask(split_labels(builder, split), fraction, classes, holdout).sum())


def is_carved(source) -> bool:
  """Whether `source` (an ImageSource or TextClassSource) evaluates on its held-out part of
  train rather than on a split of the dataset."""
  return bool(source.holdout) and source.eval_split == CARVED_SPLIT


def eval_examples(source, decoders=None) -> tf.data.Dataset:
  """The eval split's examples in stored order (only `source.classes`, relabelled): a split of
  the dataset, or the part of train held out as validation (`is_carved`)."""
  builder = source.builder
  if not is_carved(source):
    examples = builder.as_dataset(split=source.eval_split, shuffle_files=False,
                                  decoders=decoders, read_config=read_config())
    return keep_classes(examples, builder, source.classes)
  mask = holdout_mask(split_labels(builder, source.train_split), source.holdout)
  examples = builder.as_dataset(split=source.train_split, shuffle_files=False, decoders=decoders,
                                read_config=read_config())
  held_out = examples.enumerate().filter(lambda index, _: tf.gather(tf.constant(mask), index))
  return keep_classes(held_out.map(lambda _, example: example), builder, source.classes)


def num_eval_examples(source) -> int | None:
  """Examples in the eval split (of `source.classes`); None where the metadata does not say."""
  builder = source.builder
  if is_carved(source):
    labels = split_labels(builder, source.train_split)
    mask = holdout_mask(labels, source.holdout)
    if source.classes:
      mask &= np.isin(labels, list(source.classes))
    return int(mask.sum())
  if source.eval_split not in builder.info.splits:
    return None
  return num_kept(builder, source.eval_split, 1.0, source.classes)


def train_examples(builder: tfds.core.DatasetBuilder, split: str, *, fraction: float,
                   file_seed: int, process_index: int, process_count: int,
                   decoders=None, classes=(), holdout: float = 0.0) -> tf.data.Dataset:
  """This process's share of the kept train examples, one pass (finite, not yet shuffled).

  The whole split: TFDS's per-process split, files in a seeded order (then only `classes`, if
  given). A fraction: the split in stored order, filtered to the subset by position (a constant
  mask, so the pipeline stays checkpointable), and dealt out to the processes in turn; the
  shuffle after this mixes it. Labels are relabelled as `keep_classes` says. A subset of at most
  CACHE_MAX_EXAMPLES is cached after its first pass (the cache is part of an iterator checkpoint).
  `holdout`: the share of train held out as validation (`holdout_mask`), never read here.
  """
  if fraction == 1 and not holdout:
    process_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count)
    examples = builder.as_dataset(split=process_split, shuffle_files=True, decoders=decoders,
                                  read_config=read_config(shuffle_seed=int(file_seed)))
    return keep_classes(examples, builder, classes)
  mask = kept_mask(split_labels(builder, split), fraction, classes, holdout)
  examples = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                read_config=read_config())
  kept = examples.enumerate().filter(lambda index, _: tf.gather(tf.constant(mask), index))
  kept = keep_classes(kept.map(lambda _, example: example), builder, classes)
  mine = kept.shard(process_count, process_index)
  if mask.sum() <= CACHE_MAX_EXAMPLES:
    mine = mine.cache()
  return mine.with_options(deterministic())
