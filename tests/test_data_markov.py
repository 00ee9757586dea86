"""The Markov source: exact entropy math checked by enumeration and sampling, and its dataset."""

import itertools

import numpy as np
import pytest

from jaxscale.config.config_base import get_base_config
from jaxscale.data import get_datasets, markov_chain
from jaxscale.data.builders import markov as markov_builder


def _tiny_chain(seed=3):
  chain = markov_chain.random_chain(vocab_size=3, order=2, branching=2, concentration=1.0,
                                    seed=seed)
  return chain, markov_chain.stationary_distribution(chain)


def _sequence_probabilities(chain, pi, length):
  """Exact P(x_1..x_length) of the stationary process, for every sequence (brute force)."""
  k, vocab = chain.order, chain.vocab_size
  next_token_probability = np.zeros((chain.num_contexts, vocab))
  np.put_along_axis(next_token_probability, chain.successors, chain.probabilities, axis=1)
  pi_blocks = pi.reshape((vocab,) * k)
  probabilities = {}
  for sequence in itertools.product(range(vocab), repeat=length):
    if length <= k:  # A marginal of the stationary context distribution.
      probability = pi_blocks[sequence + (slice(None),) * (k - length)].sum()
    else:
      probability = pi_blocks[sequence[:k]]
      for t in range(k, length):
        context = int(np.ravel_multi_index(sequence[t - k:t], (vocab,) * k))
        probability *= next_token_probability[context, sequence[t]]
    probabilities[sequence] = probability
  return probabilities


def _entropy(probabilities):
  p = np.array([q for q in probabilities if q > 0])
  return float(-(p * np.log(p)).sum())


def test_stationary_distribution_is_stationary():
  chain, pi = _tiny_chain()
  flow = np.zeros(chain.num_contexts)
  np.add.at(flow, chain.next_contexts().ravel(), (pi[:, None] * chain.probabilities).ravel())
  np.testing.assert_allclose(flow, pi, atol=1e-12)
  assert abs(pi.sum() - 1) < 1e-12


def test_block_entropies_match_enumeration():
  chain, pi = _tiny_chain()
  entropies = markov_chain.block_entropies(chain, pi)
  for length in range(1, 6):
    probabilities = _sequence_probabilities(chain, pi, length)
    assert abs(sum(probabilities.values()) - 1) < 1e-12
    brute_force = _entropy(probabilities.values())
    if length <= chain.order + 1:
      assert brute_force == pytest.approx(entropies[length - 1], abs=1e-10)
    else:  # Beyond the order every extra token adds exactly the entropy rate.
      rate = entropies[-1] - entropies[-2]
      assert brute_force == pytest.approx(entropies[-1] + (length - chain.order - 1) * rate,
                                          abs=1e-10)


def test_min_loss_matches_enumerated_window_loss():
  """The best predictor's loss on a window = H(X_2..X_{L+1} | X_1) / L, by brute force."""
  chain, pi = _tiny_chain()
  entropies = markov_chain.block_entropies(chain, pi)
  for seq_len in (1, 2, 3, 4):
    window = _entropy(_sequence_probabilities(chain, pi, seq_len + 1).values())
    first_token = entropies[0]
    assert markov_chain.min_loss(entropies, seq_len) == pytest.approx(
        (window - first_token) / seq_len, abs=1e-10)


def test_min_loss_exceeds_rate_for_short_windows_and_tends_to_it():
  chain, pi = _tiny_chain()
  entropies = markov_chain.block_entropies(chain, pi)
  rate = markov_chain.entropy_rate(chain, pi)
  losses = [markov_chain.min_loss(entropies, seq_len) for seq_len in (1, 2, 8, 64, 100_000)]
  assert losses[0] > losses[1] > losses[2] > losses[3] > rate
  assert losses[-1] == pytest.approx(rate, abs=1e-4)


def test_samples_have_the_predicted_conditional_entropies():
  """Plug-in estimates from a long sample agree with the exact values."""
  chain, pi = _tiny_chain()
  tokens = markov_chain.sample(chain, pi, num_sequences=20_000, length=40, seed=0)
  entropies = markov_chain.block_entropies(chain, pi)

  def empirical_conditional_entropy(contexts, next_tokens):
    joint = np.unique(np.concatenate([contexts, next_tokens[:, None]], 1), axis=0,
                      return_counts=True)[1]
    marginal = np.unique(contexts, axis=0, return_counts=True)[1]
    return _entropy(joint / joint.sum()) - _entropy(marginal / marginal.sum())

  # Stationary start: the first token and the first transition already follow pi.
  assert empirical_conditional_entropy(tokens[:, :0], tokens[:, 0]) == pytest.approx(
      entropies[0], abs=0.01)
  assert empirical_conditional_entropy(tokens[:, :1], tokens[:, 1]) == pytest.approx(
      entropies[1] - entropies[0], abs=0.01)
  rate = entropies[-1] - entropies[-2]
  contexts = np.stack([tokens[:, 10:-1].ravel(), tokens[:, 9:-2].ravel()], 1)
  assert empirical_conditional_entropy(contexts, tokens[:, 11:].ravel()) == pytest.approx(
      rate, abs=0.01)


def test_samples_follow_the_successor_table():
  chain, pi = _tiny_chain()
  tokens = markov_chain.sample(chain, pi, num_sequences=50, length=200, seed=1)
  contexts = tokens[:, :-2] * chain.vocab_size + tokens[:, 1:-1]
  assert (chain.successors[contexts] == tokens[:, 2:, None]).any(-1).all()


def test_random_chain_is_deterministic():
  first, second = _tiny_chain(seed=5)[0], _tiny_chain(seed=5)[0]
  np.testing.assert_array_equal(first.successors, second.successors)
  np.testing.assert_array_equal(first.probabilities, second.probabilities)
  assert not np.array_equal(first.probabilities, _tiny_chain(seed=6)[0].probabilities)


def test_default_config_context_matters():
  """The default chain's unigram entropy is far above its rate (a model must use context)."""
  config = markov_builder.Markov.BUILDER_CONFIGS[0]
  assert config.name == markov_builder.Markov.DEFAULT_CONFIG_NAME
  chain, pi = markov_builder._chain_and_stationary(config)  # pylint: disable=protected-access
  entropies = markov_chain.block_entropies(chain, pi)
  assert entropies[0] - (entropies[-1] - entropies[-2]) > 2.0


# ---- The dataset -----------------------------------------------------------------------------

SEQ_LEN = 127  # 8 windows of 128 tokens per 1024-token example of the tiny config.


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
  config = get_base_config().dataset
  config.name, config.builder_config, config.seq_len = 'markov', 'tiny', SEQ_LEN
  config.data_dir = str(tmp_path_factory.mktemp('tfds'))
  return config


def _examples(config, split):
  builder = markov_builder.Markov(config='tiny', data_dir=config.data_dir)
  return [example['tokens'] for example in builder.as_dataset(split=split).as_numpy_iterator()]


def _windows_of(examples, window_len=SEQ_LEN + 1):
  return [example[i:i + window_len]
          for example in examples for i in range(0, len(example) - window_len + 1, window_len)]


def _rows(batches):
  """Each window of the batches (inputs plus the last target) as a hashable tuple."""
  return [tuple(inputs) + (targets[-1],)
          for batch in batches for inputs, targets in zip(batch['inputs'], batch['targets'])]


def test_dataset_facts(tiny_config):
  datasets = get_datasets(tiny_config, local_batch_size=8, num_eval_batches=2, seed=0)
  metadata = markov_builder.Markov(config='tiny', data_dir=tiny_config.data_dir).info.metadata
  assert datasets.vocab_size == 4
  assert datasets.bytes_per_token is None
  assert datasets.min_loss == pytest.approx(
      markov_chain.min_loss(metadata['block_entropies'], SEQ_LEN))
  assert datasets.min_loss > datasets.info['entropy_rate']
  assert datasets.info['num_train_tokens'] == 16 * 8 * (SEQ_LEN + 1)
  batch = next(datasets.train.as_numpy_iterator())
  assert batch['inputs'].shape == batch['targets'].shape == batch['weights'].shape == (8, SEQ_LEN)
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  assert batch['inputs'].max() < 4 and (batch['weights'] == 1).all()


def test_eval_windows_are_cut_inside_examples_and_padded(tiny_config):
  """8 validation examples x 8 windows = 64 real windows; 10 batches of 8 pad the last 16."""
  datasets = get_datasets(tiny_config, local_batch_size=8, num_eval_batches=10, seed=0)
  batches = list(datasets.eval.as_numpy_iterator())
  assert len(batches) == 10
  weights = np.concatenate([batch['weights'] for batch in batches])
  assert (weights[:64] == 1).all() and (weights[64:] == 0).all()
  expected = [tuple(window) for window in _windows_of(_examples(tiny_config, 'validation'))]
  assert _rows(batches)[:64] == expected


def test_process_shards_are_disjoint_and_come_from_their_examples(tiny_config):
  train_examples = _examples(tiny_config, 'train')
  train_windows = {tuple(window) for window in _windows_of(train_examples)}
  seen = []
  for process_index in range(2):
    datasets = get_datasets(tiny_config, local_batch_size=8, num_eval_batches=1, seed=0,
                            process_index=process_index, process_count=2)
    rows = _rows(itertools.islice(datasets.train.as_numpy_iterator(), 16))
    assert set(rows) <= train_windows
    assert len(set(rows)) > 32  # A real share of the 64 windows of its 8 examples.
    seen.append(set(rows))
  assert not seen[0] & seen[1]


def test_train_repeats_epochs_in_new_orders(tiny_config):
  """128 windows per epoch: 3 epochs' worth of batches reuse them, in different orders."""
  datasets = get_datasets(tiny_config, local_batch_size=8, num_eval_batches=1, seed=0)
  rows = _rows(itertools.islice(datasets.train.as_numpy_iterator(), 48))
  assert len(rows) == 384 and len(set(rows)) <= 128
  assert rows[:128] != rows[128:256]
