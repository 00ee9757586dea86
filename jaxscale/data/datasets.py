"""`get_datasets`: the train and eval batches the trainer consumes, and facts about them."""

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from jaxscale.data import (
    eval_windows, image_pipeline, indexed, indexed_image_pipeline, indexed_text_pipeline,
    pipeline, sources, subsets, text_class_pipeline)
from jaxscale.data.sources import DATASETS, ImageSource, TextClassSource


@dataclasses.dataclass(frozen=True)
class Datasets:
  # Infinite; this process's batches, reshuffled every epoch. Under config.dataset.loader='grain'
  # (language modelling and images) an IndexedBatches (Grain iterator, index-based state), else a
  # tf.data.Dataset.
  train: tf.data.Dataset | indexed.IndexedBatches
  eval: tf.data.Dataset    # Exactly num_eval_batches batches of the same held-out windows.
  vocab_size: int
  bytes_per_token: float | None  # Mean UTF-8 bytes per eval target token (bits per byte).
  min_loss: float | None   # Least expected loss per target (nats), for known-entropy sources.
  info: dict[str, Any]     # Extra facts to record with the run.
  # 'lm' (inputs/targets/weights) | 'classification' (image/labels/weights, or
  # inputs/input_mask/labels/weights for text).
  task: str = 'lm'
  num_classes: int | None = None  # Classification only.
  class_names: tuple[str, ...] | None = None  # Label id -> name, where the dataset names them.
  # Language modelling: each global eval window's document (-1 padding), in the order of the
  # eval batches; the clusters of the eval loss's standard error. None: each eval example is its
  # own cluster (classification).
  eval_document_ids: np.ndarray | None = None
  eval_split: str = ''  # The split eval reads (`dataset.eval_split` resolved).


def get_datasets(dataset_config, *, local_batch_size: int, num_eval_batches: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> Datasets:
  """Builds (on first use) and loads `dataset_config.name`.

  Language modelling: batches are dicts of `inputs`, `targets` (int32) and `weights` (float32),
  each [local_batch_size, dataset_config.seq_len]. Classification: `image` (float32
  [local_batch_size, S, S, 3], S = dataset_config.image_size), `labels` (float32
  [local_batch_size, num_classes]) and `weights` (float32 [local_batch_size]); see
  `image_pipeline`. Text classification: `inputs` and `input_mask` (int32 [local_batch_size,
  dataset_config.seq_len]) in place of `image`; see `text_class_pipeline`. Classification trains
  on `dataset_config.train_fraction` of the train labels (see `subsets`), of the classes
  `dataset_config.classes` (() = all; train and eval, relabelled 0..k-1). Resume a train
  iterator exactly with the Grain iterator's `get_state`/`set_state` (language modelling and images
  under `dataset_config.loader='grain'`), else with `tf.train.Checkpoint(iterator=iter(train))`.
  """
  source = sources.keep_classes(DATASETS.get(dataset_config.name)(dataset_config),
                                dataset_config.classes)
  source = sources.with_eval_split(source, dataset_config.get('eval_split', ''))
  kwargs = dict(local_batch_size=local_batch_size, num_eval_batches=num_eval_batches, seed=seed,
                process_index=process_index, process_count=process_count)
  if isinstance(source, ImageSource):
    return _image_datasets(source, dataset_config, **kwargs)
  if isinstance(source, TextClassSource):
    return _text_class_datasets(source, dataset_config, **kwargs)
  if dataset_config.loader == 'grain':
    train = indexed_text_pipeline.train_batches(
        source, dataset_config, batch_size=local_batch_size, seed=seed,
        process_index=process_index, process_count=process_count)
  else:
    train = pipeline.train_dataset(
        source, seq_len=dataset_config.seq_len, batch_size=local_batch_size,
        shuffle_buffer_size=dataset_config.shuffle_buffer_size, seed=seed,
        process_index=process_index, process_count=process_count)
  eval_set = eval_windows.eval_windows(
      source, seq_len=dataset_config.seq_len,
      num_windows=num_eval_batches * local_batch_size * process_count)
  eval_batches = pipeline.eval_dataset(
      source, seq_len=dataset_config.seq_len, batch_size=local_batch_size,
      num_batches=num_eval_batches, process_index=process_index, process_count=process_count,
      eval_set=eval_set)
  return Datasets(
      train=train, eval=eval_batches, vocab_size=source.vocab_size,
      bytes_per_token=pipeline.mean_bytes_per_token(source, eval_set),
      eval_document_ids=eval_set.document_ids, eval_split=source.eval_split,
      min_loss=source.min_loss, info=dict(source.info))


def _image_datasets(source: ImageSource, dataset_config, *, local_batch_size: int,
                    num_eval_batches: int, seed: int, process_index: int,
                    process_count: int) -> Datasets:
  train_pipeline = {'grain': indexed_image_pipeline.train_batches,
                    'tfdata': image_pipeline.train_dataset}[dataset_config.loader]
  train = train_pipeline(source, dataset_config, batch_size=local_batch_size, seed=seed,
                         process_index=process_index, process_count=process_count)
  eval_batches = image_pipeline.eval_dataset(
      source, image_size=dataset_config.image_size, batch_size=local_batch_size,
      num_batches=num_eval_batches, process_index=process_index, process_count=process_count)
  return Datasets(
      train=train, eval=eval_batches, vocab_size=0, bytes_per_token=None, min_loss=None,
      info={**source.info, **_classification_info(source, dataset_config, local_batch_size,
                                                  num_eval_batches, process_count),
            'image_size': dataset_config.image_size},
      task='classification', num_classes=source.num_classes, class_names=source.class_names,
      eval_split=source.eval_split)


def _text_class_datasets(source: TextClassSource, dataset_config, *, local_batch_size: int,
                         num_eval_batches: int, seed: int, process_index: int,
                         process_count: int) -> Datasets:
  train = text_class_pipeline.train_dataset(
      source, dataset_config, batch_size=local_batch_size, seed=seed,
      process_index=process_index, process_count=process_count)
  eval_batches = text_class_pipeline.eval_dataset(
      source, seq_len=dataset_config.seq_len, batch_size=local_batch_size,
      num_batches=num_eval_batches, process_index=process_index, process_count=process_count)
  return Datasets(
      train=train, eval=eval_batches, vocab_size=source.vocab_size, bytes_per_token=None,
      min_loss=None,
      info={**source.info, **_classification_info(source, dataset_config, local_batch_size,
                                                  num_eval_batches, process_count),
            'class_names': list(source.class_names or ()), 'seq_len': dataset_config.seq_len},
      task='classification', num_classes=source.num_classes, class_names=source.class_names,
      eval_split=source.eval_split)


def _classification_info(source, dataset_config, local_batch_size: int, num_eval_batches: int,
                         process_count: int) -> dict[str, Any]:
  """How many labels train reads, and how much of the eval split the eval set holds.

  Sizes come from the dataset's metadata; without it (a mocked dataset) they are left out.
  """
  info = {'train_fraction': dataset_config.train_fraction}
  splits = source.builder.info.splits
  if (dataset_config.train_fraction < 1 or source.classes or source.holdout
      or source.train_split in splits):
    info['num_train_labels'] = subsets.num_kept(source.builder, source.train_split,
                                                dataset_config.train_fraction, source.classes,
                                                source.holdout)
  num_eval_examples = subsets.num_eval_examples(source)
  if num_eval_examples is not None:
    global_batch_size = local_batch_size * process_count
    info['num_eval_examples'] = min(num_eval_examples, num_eval_batches * global_batch_size)
    # The num_eval_batches that would evaluate on the whole eval split.
    info['num_eval_batches_for_whole_split'] = -(-num_eval_examples // global_batch_size)
  return info
