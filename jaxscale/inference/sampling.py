"""Autoregressive generation from a trained LM: greedy, temperature, top-k and top-p sampling,
with a KV cache (default) or by rerunning the model on the whole prefix.

  model, config = sampling.restore_model('workdirs/default')
  tokens = sampling.generate(model, sampling.encode_bytes('def '), max_new_tokens=64,
                             temperature=0.8, top_k=20, rng=jax.random.key(0))
  print(sampling.decode_bytes(tokens))

Prompts of different lengths go in one batch, left-padded; the batch and the prompt length are
rounded up to shape buckets (powers of two), so the compiled loop (`jaxscale.inference.decoding`) is reused
across calls of similar sizes.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxscale.core import sharding as sharding_lib
from jaxscale.data.tokenizers import BYTE_SEPARATOR
from jaxscale.inference import decoding
# Loading a trained model belongs to the checkpoint stage; generation's users call it from here.
from jaxscale.checkpoint.restore import restore_model  # noqa: F401

MIN_PROMPT_BUCKET = 8


def generate(model, prompt_tokens, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, rng: jax.Array | None = None, *,
             top_p: float | None = None, stop_tokens: Sequence[int] = (), kv_cache: bool = True,
             mesh: jax.sharding.Mesh | None = None, rules=None) -> np.ndarray:
  """The `max_new_tokens` tokens that follow each prompt.

  Args:
    model: an NNX LM (token ids [B, L] -> logits [B, L, V]), or its `(graphdef, state)`.
    prompt_tokens: int ids, [L], [B, L], or a list of B sequences of different lengths (each at
      least one token; they are left-padded with correct positions).
    max_new_tokens: how many tokens to generate. Prompt plus new tokens may exceed the training
      `seq_len` (rotary positions extend), but the model never saw positions beyond it.
    temperature: 0 picks the most likely token (greedy); above 0, samples from
      softmax(logits / temperature).
    top_k: if set, samples only among the k most likely tokens.
    rng: a `jax.random.key`, needed when temperature > 0. The same key gives the same tokens;
      row b uses fold_in(rng, b).
    top_p: if set (0 < top_p <= 1), samples only from the smallest set of most likely tokens
      whose probability reaches top_p (nucleus sampling).
    stop_tokens: ids that end a row; its later tokens repeat the stop token (`trim_at_stop`).
    kv_cache: True caches keys and values (prefill once, one position per new token); False
      reruns the model on the whole prefix each step. Greedy output is the same either way.
    mesh, rules: run on this mesh, parameters and cache laid out by these logical-axis rules
      (`config.mesh.rules`); default: where the parameters are.

  Returns:
    int32 numpy array of the new tokens, [max_new_tokens] for a 1-D prompt, else [B, N].
  """
  graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
  prompts, squeeze = _prompt_rows(prompt_tokens)
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be at least 1, got {max_new_tokens}.')
  check_sampling_options(temperature, top_k, top_p)
  if temperature > 0 and rng is None:
    raise ValueError('Sampling with temperature > 0 needs rng=jax.random.key(seed).')
  batch_shards = 1
  if mesh is not None:
    if rules is None:
      raise ValueError('generate(mesh=...) needs rules= (config.mesh.rules) to lay out the cache.')
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
    batch_shards = _batch_shards(mesh, rules)
    state = jax.device_put(state, sharding_lib.state_shardings(state, mesh, rules))
  rng = rng if rng is not None else jax.random.key(0)
  row_keys = [jax.random.fold_in(rng, b) for b in range(len(prompts))]
  options = [dict(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0, key=key)
             for key in row_keys]
  new_BxN = generate_rows(graphdef, state, prompts, options, max_new_tokens,
                          stop_tokens=tuple(stop_tokens), kv_cache=kv_cache, mesh=mesh,
                          rules=rules, batch_multiple=batch_shards)
  return new_BxN[0] if squeeze else new_BxN


def _batch_shards(mesh, rules) -> int:
  """How many pieces the 'batch' logical axis is cut into on `mesh`: the padded batch must split."""
  batch_axes = dict(rules).get('batch')
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
  return math.prod(mesh.shape[axis] for axis in batch_axes)


def generate_rows(graphdef, state, prompts: list[np.ndarray], options: list[dict],
                  max_new_tokens: int, *, stop_tokens: tuple[int, ...] = (),
                  kv_cache: bool = True, mesh=None, rules=None,
                  batch_multiple: int = 1) -> np.ndarray:
  """[len(prompts), max_new_tokens] new tokens; `options[b]` holds row b's `temperature`,
  `top_k` (0 = all), `top_p` (1 = all) and `key`. Pads the batch and the prompt length up to
  their buckets, so similar calls reuse one compiled loop."""
  batch = len(prompts)
  prompt_len = max(bucket(max(len(p) for p in prompts)), MIN_PROMPT_BUCKET)
  padded_batch = bucket(batch)
  padded_batch = -(-padded_batch // batch_multiple) * batch_multiple
  prompt_BxP = np.zeros((padded_batch, prompt_len), np.int32)
  first_B = np.full((padded_batch,), prompt_len - 1, np.int32)  # Filler rows: one token.
  for b, prompt in enumerate(prompts):
    prompt_BxP[b, prompt_len - len(prompt):] = prompt
    first_B[b] = prompt_len - len(prompt)
  filler = dict(options[0], temperature=0.0)
  rows = options + [filler] * (padded_batch - batch)
  stacked = {
      'temperature': jnp.asarray([o['temperature'] for o in rows], jnp.float32),
      'top_k': jnp.asarray([o['top_k'] for o in rows], jnp.int32),
      'top_p': jnp.asarray([o['top_p'] for o in rows], jnp.float32),
      'key': jnp.stack([o['key'] for o in rows]),
  }
  new_BxN = decoding.generate_padded(
      graphdef, state, jnp.asarray(prompt_BxP), jnp.asarray(first_B), stacked,
      max_new_tokens=max_new_tokens, stop_tokens=stop_tokens,
      sample=any(o['temperature'] > 0 for o in options), kv_cache=kv_cache, mesh=mesh,
      rules=rules)
  return np.asarray(new_BxN)[:batch]


def bucket(n: int) -> int:
  """The next power of two >= n: the shapes one compiled program serves."""
  return 1 << max(n - 1, 0).bit_length()


def _prompt_rows(prompt_tokens) -> tuple[list[np.ndarray], bool]:
  """Prompts as a list of 1-D int32 arrays, and whether the caller passed a single 1-D one."""
  ragged = isinstance(prompt_tokens, (list, tuple)) and len(prompt_tokens) and not np.isscalar(
      prompt_tokens[0])
  rows = [np.asarray(p) for p in prompt_tokens] if ragged else None
  if rows is None:
    prompt = np.asarray(prompt_tokens)
    squeeze = prompt.ndim == 1
    rows = list(prompt[None] if squeeze else prompt) if prompt.ndim in (1, 2) else [prompt]
  else:
    squeeze = False
  for row in rows:
    if row.ndim != 1 or row.size == 0 or not np.issubdtype(row.dtype, np.integer):
      raise ValueError(f'prompt_tokens must be integer ids of shape [L] or [B, L] (or a list of '
                       f'1-D sequences) with L >= 1; got dtype {row.dtype} and shape {row.shape}.')
  return [row.astype(np.int32) for row in rows], squeeze


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None):
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 = greedy), got {temperature}.')
  if top_k is not None and top_k < 1:
    raise ValueError(f'top_k must be a positive number of tokens or None, got {top_k}.')
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1] or None, got {top_p}.')


def trim_at_stop(tokens, stop_tokens: Sequence[int]) -> np.ndarray:
  """A row of generated tokens up to (not including) its first stop token."""
  tokens = np.asarray(tokens)
  stops = np.flatnonzero(np.isin(tokens, list(stop_tokens)))
  return tokens[:stops[0]] if stops.size else tokens


# ---------------------------------------------------------------------------------------------
# Byte tokenization (the `byte` tokenizer of the default python_stdlib and lm1b/c4 data).


def encode_bytes(text: str) -> np.ndarray:
  """UTF-8 bytes of `text` as int32 token ids, as the `byte` tokenizer produces them.

  >>> encode_bytes('é = 1')
  array([195, 169,  32,  61,  32,  49], dtype=int32)
  """
  return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)


def decode_bytes(tokens, stop_at_separator: bool = True) -> str:
  """Text of byte token ids; invalid UTF-8 becomes U+FFFD. The document separator (byte 0)
  ends the text unless `stop_at_separator` is False.

  >>> decode_bytes([195, 169, 32, 61, 32, 49, 0, 120])
  'é = 1'
  """
  ids = np.asarray(tokens).reshape(-1)
  if ids.size and (ids.min() < 0 or ids.max() > 255):
    raise ValueError(f'Byte token ids lie in 0..255; got {ids.min()}..{ids.max()}. Was the '
                     'model trained with the byte tokenizer (config.dataset.tokenizer)?')
  if stop_at_separator and BYTE_SEPARATOR in ids:
    ids = ids[:int(np.argmax(ids == BYTE_SEPARATOR))]
  return ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')
