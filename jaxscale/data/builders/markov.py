"""TFDS builder of token streams from a random sparse Markov chain with a known entropy rate.

Each example is one long stationary sample (`tokens`, int32 [sequence_length]); windows are cut
inside an example, never across two, so every window starts at a stationary position and the
least achievable loss of a window is known exactly (see `markov_chain.min_loss`). The entropies
are stored in the dataset's metadata (`builder.info.metadata`, nats).
"""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from jaxscale.data import builders, markov_chain


@dataclasses.dataclass(eq=False, kw_only=True)
class MarkovConfig(tfds.core.BuilderConfig):
  vocab_size: int = 32
  order: int = 2                 # Tokens of context that determine the next token's law.
  branching: int = 4             # Possible successors of each context.
  concentration: float = 1.0     # Dirichlet parameter of the successor weights.
  chain_seed: int = 0
  sequence_length: int = 8192    # Tokens per example.
  num_train_sequences: int = 1024
  num_validation_sequences: int = 64


_CONFIGS = [
    # Context matters a lot: unigram entropy 3.46 nats, the first token alone leaves 3.18,
    # the full order-2 context 1.08 (the entropy rate). 8.4M train tokens.
    MarkovConfig(name='vocab32_order2_branch4', description='32 tokens, order 2, 4 successors.'),
    # Small and quick to build, for tests.
    MarkovConfig(name='tiny', description='4 tokens, order 2, 2 successors; for tests.',
                 vocab_size=4, branching=2, sequence_length=1024, num_train_sequences=16,
                 num_validation_sequences=8),
]


@functools.lru_cache(maxsize=8)
def _chain_and_stationary(config: MarkovConfig):
  chain = markov_chain.random_chain(
      vocab_size=config.vocab_size, order=config.order, branching=config.branching,
      concentration=config.concentration, seed=config.chain_seed)
  return chain, markov_chain.stationary_distribution(chain)


class Markov(builders.CodePathFromSourceFile, tfds.core.GeneratorBasedBuilder):
  """Stationary samples of a random sparse order-k Markov chain."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = _CONFIGS
  DEFAULT_CONFIG_NAME = 'vocab32_order2_branch4'

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    chain, pi = _chain_and_stationary(config)
    entropies = markov_chain.block_entropies(chain, pi)
    return self.dataset_info_from_configs(
        description=(
            'Stationary samples of a random sparse Markov chain whose entropy rate is known '
            'exactly; for checking the irreducible loss of fitted scaling laws.'),
        features=tfds.features.FeaturesDict({
            'tokens': tfds.features.Tensor(shape=(config.sequence_length,), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(
            entropy_rate=entropies[-1] - entropies[-2],
            block_entropies=entropies,  # H_1..H_{order+1}, nats.
            unigram_entropy=entropies[0],
            vocab_size=config.vocab_size,
            order=config.order),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    config = self.builder_config
    # Distinct sampling seeds per split, so validation samples are fresh draws of the same chain.
    return {
        'train': self._generate_examples(config.num_train_sequences, seed=1),
        'validation': self._generate_examples(config.num_validation_sequences, seed=2),
    }

  def _generate_examples(self, num_sequences: int, seed: int):
    config = self.builder_config
    chain, pi = _chain_and_stationary(config)
    tokens = markov_chain.sample(chain, pi, num_sequences=num_sequences,
                                 length=config.sequence_length, seed=seed)
    for index, sequence in enumerate(tokens):
      yield index, {'tokens': sequence}
