"""The `markov` dataset: token streams whose least achievable loss is known exactly."""

from jaxscale.data import markov_chain
from jaxscale.data.builders import markov as markov_builder
from jaxscale.data.prepare import add_array_record, prepare
from jaxscale.data.sources import (
    DATASETS, TokenSource, builder_config_or_default, data_dir_or_default)


@DATASETS.register('markov')
def markov(dataset_config) -> TokenSource:
  """Tokens are the chain's states (config.dataset.tokenizer does not apply)."""
  builder = markov_builder.Markov(
      config=builder_config_or_default(dataset_config),
      data_dir=data_dir_or_default(dataset_config), file_format='tfrecord')
  prepare(builder)  # Samples the chain the first time; a no-op after.
  add_array_record(builder)  # For the index-based train pipeline; tf.data reads the tfrecords.
  config, metadata = builder.builder_config, builder.info.metadata
  if dataset_config.seq_len + 1 > config.sequence_length:
    raise ValueError(f'dataset.seq_len={dataset_config.seq_len} needs windows longer than the '
                     f'{config.sequence_length}-token examples of markov/{config.name}.')
  windows_per_sequence = config.sequence_length // (dataset_config.seq_len + 1)
  return TokenSource(
      builder=builder, train_split='train', eval_split='validation',
      to_tokens=lambda example: example['tokens'],
      vocab_size=metadata['vocab_size'], windows_cross_examples=False,
      min_loss=markov_chain.min_loss(metadata['block_entropies'], dataset_config.seq_len),
      info={
          'entropy_rate': metadata['entropy_rate'],
          'unigram_entropy': metadata['unigram_entropy'],
          'order': metadata['order'],
          'num_train_tokens': (config.num_train_sequences * windows_per_sequence
                               * (dataset_config.seq_len + 1)),
      })
