"""Log-probabilities of whole token sequences, batched and bucketed by length: what the server's
`echo` with `logprobs` answers and what lm-eval's loglikelihood requests need.

Rows are right-padded to one length (a power of two, at least 8) and the batch to a power of two,
so one compiled forward pass serves any mix of lengths near each other. The model is causal, so
padding after a row's tokens cannot change their scores; the forward pass is the one the eval
step runs (`model(tokens)`), so the scores are the eval loss's per-token terms, negated.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxscale.inference import sampling

MIN_LENGTH_BUCKET = 8
TOP_K = 5  # The most alternatives a request may ask for (OpenAI's `logprobs` limit).


@dataclasses.dataclass
class Scores:
  """Scores of one row of L tokens."""
  token_logprobs: np.ndarray  # [L - 1]: log p(token i + 1 | tokens 0..i).
  top_ids: np.ndarray         # [L, TOP_K]: the most likely next tokens after each position.
  top_logprobs: np.ndarray    # [L, TOP_K]: their log-probabilities.


@functools.partial(jax.jit, static_argnames=('graphdef',))
def _score_padded(graphdef, state, tokens_BxL):
  model = nnx.merge(graphdef, state)
  model.eval()
  logprobs_BxLxV = jax.nn.log_softmax(model(tokens_BxL).astype(jnp.float32), axis=-1)
  next_BxL1 = jnp.take_along_axis(logprobs_BxLxV[:, :-1], tokens_BxL[:, 1:, None], axis=-1)[..., 0]
  top_lp_BxLxK, top_ids_BxLxK = jax.lax.top_k(logprobs_BxLxV, TOP_K)
  return next_BxL1, top_ids_BxLxK, top_lp_BxLxK


def score_rows(graphdef, state, rows: list[np.ndarray], batch_size: int = 0) -> list[Scores]:
  """Scores of each row (1-D int ids, at least one token), `batch_size` rows per forward pass
  (0: all at once)."""
  batch_size = batch_size or max(len(rows), 1)
  scores = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    length = max(sampling.bucket(max(len(r) for r in chunk)), MIN_LENGTH_BUCKET)
    tokens_BxL = np.zeros((sampling.bucket(len(chunk)), length), np.int32)
    for b, row in enumerate(chunk):
      tokens_BxL[b, :len(row)] = row
    next_lp, top_ids, top_lp = jax.device_get(_score_padded(graphdef, state, tokens_BxL))
    for b, row in enumerate(chunk):
      n = len(row)
      scores.append(Scores(next_lp[b, :n - 1], top_ids[b, :n], top_lp[b, :n]))
  return scores
