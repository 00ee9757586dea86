"""What each registered dataset provides to the input pipeline, and the registry itself.

`DATASETS.get(name)(dataset_config)` returns a `TokenSource` (language modelling) or an
`ImageSource` (classification): a prepared TFDS builder, its train and held-out splits, and what
the pipeline needs to know about its examples. The pipelines (`pipeline.py`, `image_pipeline.py`)
do the rest the same way for every dataset.
"""

import dataclasses
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxscale import paths
from jaxscale.registry import Registry

DATASETS = Registry('dataset')


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
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


def data_dir_or_default(dataset_config) -> str | None:
  """The config's TFDS data dir ('' means the TFDS default, ~/tensorflow_datasets)."""
  return paths.resolve_optional(dataset_config.data_dir)


def builder_config_or_default(dataset_config) -> str | None:
  return dataset_config.builder_config or None
