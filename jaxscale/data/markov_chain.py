"""A sparse random Markov chain of order k whose entropy is known exactly.

The chain is a table over contexts (the last k tokens, as a base-V number whose least significant
digit is the newest token): each context has `branching` distinct successor tokens with Dirichlet
weights. Sampling starts from the stationary distribution of the context chain, so every position
of a sample is stationary and the entropy of any window follows from the block entropies below.
All entropies are in nats, the unit of a cross-entropy loss.
"""

import dataclasses

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph


@dataclasses.dataclass(frozen=True)
class MarkovChain:
  vocab_size: int
  order: int
  successors: np.ndarray     # int32 [num_contexts, branching]: the tokens a context may emit
  probabilities: np.ndarray  # float64 [num_contexts, branching]: their probabilities

  @property
  def num_contexts(self) -> int:
    return self.vocab_size**self.order

  def next_contexts(self) -> np.ndarray:
    """[num_contexts, branching]: the context after emitting each successor."""
    contexts = np.arange(self.num_contexts)[:, None]
    return (contexts * self.vocab_size + self.successors) % self.num_contexts


def random_chain(*, vocab_size: int, order: int, branching: int, concentration: float,
                 seed: int) -> MarkovChain:
  """A random chain with a unique stationary distribution (deterministic for the arguments)."""
  if not 1 <= branching <= vocab_size:
    raise ValueError(f'branching must be in [1, vocab_size={vocab_size}], got {branching}.')
  # A random sparse chain may split into several closed classes (then the stationary
  # distribution, and so the entropy rate, is not unique); draw again until it does not.
  for attempt in range(100):
    rng = np.random.default_rng([seed, attempt])
    num_contexts = vocab_size**order
    # `branching` distinct successors per context: the first columns of a random permutation.
    successors = np.argsort(rng.random((num_contexts, vocab_size)), axis=1)[:, :branching]
    probabilities = rng.dirichlet(np.full(branching, concentration), size=num_contexts)
    chain = MarkovChain(vocab_size, order, successors.astype(np.int32), probabilities)
    if _num_closed_classes(chain) == 1:
      return chain
  raise RuntimeError('No chain with a single closed class in 100 draws; raise branching.')


def _num_closed_classes(chain: MarkovChain) -> int:
  """Strongly connected components of the context graph that no edge leaves."""
  sources = np.repeat(np.arange(chain.num_contexts), chain.successors.shape[1])
  targets = chain.next_contexts().ravel()
  graph = scipy.sparse.coo_matrix(
      (np.ones_like(sources), (sources, targets)), shape=(chain.num_contexts,) * 2)
  _, labels = scipy.sparse.csgraph.connected_components(graph, connection='strong')
  leaves_component = labels[sources] != labels[targets]
  num_components = labels.max() + 1
  return num_components - len(np.unique(labels[sources[leaves_component]]))


def stationary_distribution(chain: MarkovChain, tolerance: float = 1e-14) -> np.ndarray:
  """float64 [num_contexts]: pi with pi P = pi, by power iteration on the lazy chain.

  The lazy chain (P + I) / 2 has the same stationary distribution and is aperiodic, so the
  iteration converges even when P itself is periodic.
  """
  next_contexts = chain.next_contexts().ravel()
  pi = np.full(chain.num_contexts, 1.0 / chain.num_contexts)
  for _ in range(1_000_000):
    flow = np.bincount(next_contexts, weights=(pi[:, None] * chain.probabilities).ravel(),
                       minlength=chain.num_contexts)
    new_pi = 0.5 * (pi + flow)
    new_pi /= new_pi.sum()
    if np.abs(new_pi - pi).sum() < tolerance:
      return new_pi
    pi = new_pi
  raise RuntimeError('The stationary distribution did not converge.')


def _entropy(p: np.ndarray) -> float:
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def block_entropies(chain: MarkovChain, pi: np.ndarray) -> list[float]:
  """[H_1, ..., H_{k+1}]: entropy of n consecutive tokens of the stationary process.

  H_n for n <= k marginalises the context distribution pi (stationarity makes any n consecutive
  digits of a context equally distributed); H_{k+1} = H_k + entropy rate.
  """
  k, vocab_size = chain.order, chain.vocab_size
  pi_blocks = pi.reshape((vocab_size,) * k)  # axis 0 = oldest token
  entropies = [_entropy(pi_blocks.sum(axis=tuple(range(n, k))).ravel()) for n in range(1, k + 1)]
  return entropies + [entropies[-1] + entropy_rate(chain, pi)]


def entropy_rate(chain: MarkovChain, pi: np.ndarray) -> float:
  """h = sum_c pi(c) H(next token | context c)."""
  p = chain.probabilities
  safe_log = np.log(np.where(p > 0, p, 1.0))
  return float(-(pi * (p * safe_log).sum(axis=1)).sum())


def conditional_entropies(entropies: list[float], num_targets: int) -> np.ndarray:
  """[num_targets]: H(X_{i+1} | X_1..X_i) for i = 1..num_targets, from block entropies.

  Beyond the chain's order the context is complete and the conditional entropy is the rate.
  """
  order = len(entropies) - 1
  increments = np.diff(entropies)  # H(X_{n+1} | X_1..X_n) for n = 1..order
  context_lengths = np.minimum(np.arange(1, num_targets + 1), order)
  return increments[context_lengths - 1]


def min_loss(entropies: list[float], seq_len: int) -> float:
  """The least expected loss per target of a window of seq_len + 1 tokens, in nats.

  The window inputs X_1..X_L predict targets X_2..X_{L+1}; a window starts at a stationary
  position with no earlier context, so the first order - 1 targets see a short context.
  """
  return float(conditional_entropies(entropies, seq_len).mean())


def sample(chain: MarkovChain, pi: np.ndarray, *, num_sequences: int, length: int,
           seed: int) -> np.ndarray:
  """int32 [num_sequences, length]: stationary samples, vectorised across sequences."""
  rng = np.random.default_rng(seed)
  k, vocab_size = chain.order, chain.vocab_size
  tokens = np.empty((num_sequences, length), np.int32)
  contexts = rng.choice(chain.num_contexts, size=num_sequences, p=pi)
  for position in range(min(k, length)):  # The start context's digits, oldest first.
    tokens[:, position] = contexts // vocab_size**(k - 1 - position) % vocab_size
  cumulative = np.cumsum(chain.probabilities, axis=1)
  for position in range(k, length):
    uniforms = rng.random(num_sequences)[:, None]
    choice = np.minimum((uniforms > cumulative[contexts]).sum(axis=1), cumulative.shape[1] - 1)
    next_tokens = chain.successors[contexts, choice]
    tokens[:, position] = next_tokens
    contexts = (contexts * vocab_size + next_tokens) % chain.num_contexts
  return tokens
