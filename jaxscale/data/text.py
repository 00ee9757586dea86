"""Text datasets: documents -> tokens (byte-level by default, or SentencePiece) + separator.

python_stdlib is built locally on first use; lm1b and c4 load through their real TFDS builders
(tested offline with `tfds.testing.mock_data`).
"""

import sys

import tensorflow_datasets as tfds

from jaxscale.core import paths
from jaxscale.data import tokenizers
from jaxscale.data.builders import python_stdlib as python_stdlib_builder
from jaxscale.data.prepare import add_array_record, prepare
from jaxscale.data.sources import (
    DATASETS, TokenSource, builder_config_or_default, data_dir_or_default)


def text_source(builder, *, train_split: str, eval_split: str, dataset_config,
                info: dict | None = None) -> TokenSource:
  tokenizer = tokenizers.make_tokenizer(dataset_config.tokenizer,
                                       paths.resolve_optional(dataset_config.spm_model_path) or '')
  return TokenSource(
      builder=builder, train_split=train_split, eval_split=eval_split,
      to_tokens=lambda example: tokenizer.tokenize_document(example['text']),
      vocab_size=tokenizer.vocab_size, windows_cross_examples=True,
      token_bytes=tokenizer.token_bytes,
      info={'tokenizer': dataset_config.tokenizer, **_split_sizes(builder), **(info or {})})


def _split_sizes(builder) -> dict[str, int]:
  return {f'num_{name}_examples': split.num_examples for name, split in builder.info.splits.items()}


@DATASETS.register('python_stdlib')
def python_stdlib(dataset_config) -> TokenSource:
  builder = python_stdlib_builder.PythonStdlib(
      config=builder_config_or_default(dataset_config),
      data_dir=data_dir_or_default(dataset_config), file_format='tfrecord')
  prepare(builder)  # Reads the local stdlib the first time; a no-op after.
  add_array_record(builder)  # For the index-based train pipeline; tf.data reads the tfrecords.
  num_train_bytes = builder.info.metadata['num_bytes']['train']
  info = {'python_version': sys.version, 'num_train_bytes': num_train_bytes}
  if dataset_config.tokenizer == 'byte':  # A token per byte, plus a separator per file.
    info['num_train_tokens'] = num_train_bytes + builder.info.splits['train'].num_examples
  return text_source(builder, train_split='train', eval_split='validation',
                     dataset_config=dataset_config, info=info)


@DATASETS.register('lm1b')
def lm1b(dataset_config) -> TokenSource:
  builder = tfds.builder('lm1b', config=builder_config_or_default(dataset_config),
                         data_dir=data_dir_or_default(dataset_config))
  # Not downloaded here: offline, TFDS would retry for minutes before failing. Prepare it once with
  # `tfds build lm1b --data_dir DIR` (~1.8 GB from statmt.org); an unprepared dir gets that advice.
  return text_source(builder, train_split='train', eval_split='test', dataset_config=dataset_config)


@DATASETS.register('c4')
def c4(dataset_config) -> TokenSource:
  # No download_and_prepare: C4 is made by an Apache Beam job over Common Crawl (terabytes).
  # Point data_dir at a prepared copy (e.g. gs://tfds-data/datasets); TFDS says so if it is absent.
  builder = tfds.builder('c4', config=builder_config_or_default(dataset_config) or 'en',
                         data_dir=data_dir_or_default(dataset_config))
  return text_source(builder, train_split='train', eval_split='validation',
                     dataset_config=dataset_config)
