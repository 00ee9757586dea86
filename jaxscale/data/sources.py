"""What each registered dataset provides to the input pipeline, and the registry itself.

`DATASETS.get(name)(dataset_config)` returns a `TokenSource`: a prepared TFDS builder, its train
and held-out splits, and how an example becomes tokens. The pipeline (`pipeline.py`) does the rest
the same way for every dataset.
"""

import dataclasses
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

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


def data_dir_or_default(dataset_config) -> str | None:
  """The config's TFDS data dir ('' means the TFDS default, ~/tensorflow_datasets)."""
  return dataset_config.data_dir or None


def builder_config_or_default(dataset_config) -> str | None:
  return dataset_config.builder_config or None
