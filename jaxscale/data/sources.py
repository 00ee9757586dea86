"""What each registered dataset provides to the input pipeline, and the registry itself.

`DATASETS.get(name)(dataset_config)` returns a `TokenSource` (language modelling), an
`ImageSource` or a `TextClassSource` (classification): a prepared TFDS builder, its train and
held-out splits, and what the pipeline needs to know about its examples. The pipelines
(`pipeline.py`, `image_pipeline.py`, `text_class_pipeline.py`) do the rest the same way for every
dataset.
"""

import dataclasses
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale.config import validation
from jaxscale.config.validation import ConfigError
from jaxscale.core import paths
from jaxscale.core.registry import Registry

DATASETS = Registry('dataset')
TOKENIZERS = ('byte', 'sentencepiece', 'hf:DIR', 'none')
LOADERS = ('grain', 'tfdata')


@validation.register_check
def check_dataset(config):
  d = config.dataset
  validation.check_positive(config, 'dataset.seq_len')
  validation.check_choice('config.dataset.name', d.name, DATASETS.names())
  if not d.tokenizer.startswith('hf:'):  # 'hf:DIR' is checked by jaxscale.data.hf_tokenizer.
    validation.check_choice('config.dataset.tokenizer', d.tokenizer, TOKENIZERS)
  validation.check_choice('config.dataset.loader', d.loader, LOADERS)
  if not isinstance(d.get('eval_split', ''), str):
    raise ConfigError(f'config.dataset.eval_split={d.eval_split!r} must be a split name, e.g. '
                      "'test', or '' (the dataset's validation split).")
  if not 0 < d.train_fraction <= 1:
    raise ConfigError(f'config.dataset.train_fraction={d.train_fraction} must be in '
                      '(0, 1] (the fraction of train labels to use).')
  classes = tuple(d.classes)
  if classes and (len(classes) < 2 or len(set(classes)) != len(classes) or not all(
      isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)):
    raise ConfigError(f'config.dataset.classes={classes!r} must be () (every class) or at least '
                      'two distinct label ids >= 0, e.g. (5, 6, 7, 8, 9).')


@dataclasses.dataclass(frozen=True)
class TokenSource:
  builder: tfds.core.DatasetBuilder
  train_split: str
  eval_split: str
  to_tokens: Callable[[dict[str, tf.Tensor]], tf.Tensor]  # example -> int32 [num_tokens]
  vocab_size: int
  # True: documents (separator included in to_tokens) are concatenated into one stream and cut
  # into windows across document boundaries. False: each example is a long stream of its own and
  # windows are cut inside it, never across two (the remainder of each example is dropped).
  windows_cross_examples: bool
  token_bytes: np.ndarray | None = None  # UTF-8 bytes per token id; None: tokens are not text.
  min_loss: float | None = None          # Known-entropy sources: least loss per target, nats.
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """Examples with an `image` (uint8 [H, W, C], C = 1 or 3) and an integer `label`."""
  builder: tfds.core.DatasetBuilder
  train_split: str
  eval_split: str
  num_classes: int
  # Images are normalised per channel as (pixel / 255 - mean) / std; mean = std = 0.5 maps to
  # [-1, 1].
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  # Eval preprocessing. None: resize to image_size. A fraction f: resize the shorter side to
  # image_size / f, then take the central image_size square (the usual ImageNet eval, f = 0.875).
  eval_crop_fraction: float | None = None
  class_names: tuple[str, ...] | None = None  # Label id -> name, where the dataset names them.
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  # The builder's labels kept, in the order of the new ids 0..num_classes-1; () = every label
  # as it is (see `keep_classes`).
  classes: tuple[int, ...] = ()
  # A dataset without a validation split: the stratified share of train held out as one
  # (`subsets.holdout_mask`, never trained on), its default eval split 'validation'. 0: none.
  holdout: float = 0.0


@dataclasses.dataclass(frozen=True)
class TextClassSource:
  """Examples with a text (string scalar) under `text_key` and an integer `label`."""
  builder: tfds.core.DatasetBuilder
  train_split: str
  eval_split: str
  text_key: str
  num_classes: int
  to_tokens: Callable[[tf.Tensor], tf.Tensor]  # string scalar -> int32 [num_tokens], no specials
  # Ids past the tokenizer's own (see `special_tokens`); vocab_size counts them too.
  pad_id: int
  cls_id: int
  vocab_size: int
  class_names: tuple[str, ...] | None = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  classes: tuple[int, ...] = ()  # As for ImageSource.
  holdout: float = 0.0  # As for ImageSource.


def keep_classes(source, classes):
  """`source` (an ImageSource or TextClassSource) restricted to the labels `classes` (the
  config's `dataset.classes`), relabelled 0..k-1 in that order; () leaves it as it is. The
  pipelines filter and relabel the examples (`subsets.keep_classes`)."""
  classes = tuple(int(c) for c in classes)
  if not classes:
    return source
  if not isinstance(source, (ImageSource, TextClassSource)):
    raise ConfigError(f'config.dataset.classes={classes} needs a classification dataset; '
                      f'{type(source).__name__} has no labels (set it to ()).')
  out_of_range = [c for c in classes if c >= source.num_classes]
  if out_of_range:
    raise ConfigError(f'config.dataset.classes={classes}: {out_of_range} are not labels of this '
                      f'dataset, which has {source.num_classes} classes (0..'
                      f'{source.num_classes - 1}).')
  names = source.class_names and tuple(source.class_names[c] for c in classes)
  return dataclasses.replace(source, classes=classes, num_classes=len(classes), class_names=names,
                             info={**source.info, 'classes': list(classes)})


def with_eval_split(source, eval_split: str):
  """`source` evaluating on `eval_split` (the config's `dataset.eval_split`): '' keeps the
  dataset's own validation split (for datasets without one, the part of train held out as
  'validation'); another name must be a split of the dataset."""
  if not eval_split:
    return dataclasses.replace(source, eval_split='validation') if getattr(
        source, 'holdout', 0) else source
  splits = set(source.builder.info.splits)  # Empty where the metadata does not list them.
  if getattr(source, 'holdout', 0) and splits:
    splits.add('validation')
  if splits and eval_split not in splits:
    raise ConfigError(f'config.dataset.eval_split={eval_split!r} is not a split of '
                      f'{source.builder.name!r}; choose one of {sorted(splits)} or \'\' (its '
                      'validation split).')
  if eval_split == source.train_split:
    raise ConfigError(f'config.dataset.eval_split={eval_split!r} is the split the run trains on; '
                      "set '' (the validation split) or another held-out split.")
  return dataclasses.replace(source, eval_split=eval_split)


def class_names_of(builder: tfds.core.DatasetBuilder) -> tuple[str, ...] | None:
  """The names of the builder's `label` ClassLabel (TFDS makes '0', '1', ... if it has none)."""
  label = builder.info.features['label']
  names = getattr(label, 'names', None)
  return tuple(names) if names else None


def prepared_builder(name: str, dataset_config, how_to_prepare: str) -> tfds.core.DatasetBuilder:
  """The TFDS builder of a real dataset, which must already be prepared in the data dir.

  Never downloads: offline, TFDS would retry for minutes before failing. An unprepared data dir
  fails at once, saying where it looked and (how_to_prepare) how to prepare it.
  """
  config = builder_config_or_default(dataset_config)
  # A name may carry its config ('glue/sst2'); TFDS refuses a second one, even None.
  builder = tfds.builder(name, data_dir=data_dir_or_default(dataset_config),
                         **({'config': config} if config else {}))
  try:
    builder.as_dataset(split='train')  # Lazy: only finds the files (what mock_data replaces).
  except AssertionError as e:  # TFDS's "could not find data in DIR".
    raise FileNotFoundError(
        f'Dataset {name!r} is not prepared in {builder.data_dir} (config.dataset.data_dir='
        f'{dataset_config.data_dir!r}). Either point config.dataset.data_dir at a TFDS data dir '
        f'that holds it (e.g. gs://tfds-data/datasets on Cloud), or {how_to_prepare} and '
        'set config.dataset.data_dir=DIR.') from e
  return builder


def data_dir_or_default(dataset_config) -> str | None:
  """The config's TFDS data dir ('' means the TFDS default, ~/tensorflow_datasets)."""
  return paths.resolve_optional(dataset_config.data_dir)


def builder_config_or_default(dataset_config) -> str | None:
  return dataset_config.builder_config or None
