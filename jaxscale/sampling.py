"""Autoregressive generation from a trained LM: greedy, temperature and top-k sampling.

  model, config = sampling.restore_model('workdirs/default')
  tokens = sampling.generate(model, sampling.encode_bytes('def '), max_new_tokens=64,
                             temperature=0.8, top_k=20, rng=jax.random.key(0))
  print(sampling.decode_bytes(tokens))

The whole loop is one jitted `lax.fori_loop` over a fixed-length token buffer (prompt + new
tokens): each step runs the model on the full buffer and reads the logits at the current
position. The model is causal, so tokens after that position (still zero) cannot change them.
This recomputes the prefix every step (no KV cache), which costs nothing that matters for the
small models trained here and keeps the model code free of a decoding mode.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxscale import checkpointing, param_paths, paths
from jaxscale import workdir as workdir_lib
from jaxscale.data.tokenizers import BYTE_SEPARATOR


def generate(model, prompt_tokens, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, rng: jax.Array | None = None) -> np.ndarray:
  """The `max_new_tokens` tokens that follow `prompt_tokens`.

  Args:
    model: an NNX LM (token ids [B, L] -> logits [B, L, V]), or its `(graphdef, state)`.
    prompt_tokens: int ids, [L] or [B, L] (every row the same length, at least one token).
    max_new_tokens: how many tokens to generate. Prompt plus new tokens may exceed the training
      `seq_len` (rotary positions extend), but the model never saw positions beyond it.
    temperature: 0 picks the most likely token (greedy); above 0, samples from
      softmax(logits / temperature).
    top_k: if set, samples only among the k most likely tokens.
    rng: a `jax.random.key`, needed when temperature > 0. The same key gives the same tokens.

  Returns:
    int32 numpy array of the new tokens, [max_new_tokens] or [B, max_new_tokens] like the prompt.
  """
  graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
  prompt = np.asarray(prompt_tokens)
  squeeze = prompt.ndim == 1
  prompt_BxP = prompt[None] if squeeze else prompt
  if prompt_BxP.ndim != 2 or prompt_BxP.shape[1] == 0 or not np.issubdtype(prompt.dtype,
                                                                             np.integer):
    raise ValueError(f'prompt_tokens must be integer ids of shape [L] or [B, L] with L >= 1; '
                     f'got dtype {prompt.dtype} and shape {prompt.shape}.')
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be at least 1, got {max_new_tokens}.')
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 = greedy), got {temperature}.')
  greedy = temperature == 0
  if not greedy and rng is None:
    raise ValueError('Sampling with temperature > 0 needs rng=jax.random.key(seed).')
  if top_k is not None and top_k < 1:
    raise ValueError(f'top_k must be a positive number of tokens or None, got {top_k}.')
  new_BxT = _generate(graphdef, state, jnp.asarray(prompt_BxP, jnp.int32),
                      jnp.float32(max(temperature, 1e-30)),
                      rng if rng is not None else jax.random.key(0),
                      max_new_tokens=max_new_tokens, top_k=top_k, greedy=greedy)
  new_BxT = np.asarray(new_BxT)
  return new_BxT[0] if squeeze else new_BxT


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'top_k', 'greedy'))
def _generate(graphdef, state, prompt_BxP, temperature, rng, *, max_new_tokens: int,
              top_k: int | None, greedy: bool):
  model = nnx.merge(graphdef, state)
  model.eval()
  batch, prompt_len = prompt_BxP.shape
  buffer_BxL = jnp.zeros((batch, prompt_len + max_new_tokens), jnp.int32)
  buffer_BxL = buffer_BxL.at[:, :prompt_len].set(prompt_BxP)

  def step(position, buffer_BxL):
    logits_BxV = model(buffer_BxL)[:, position, :]
    if greedy:
      next_B = jnp.argmax(logits_BxV, axis=-1)
    else:
      logits_BxV = logits_BxV / temperature
      if top_k is not None:
        kth_largest_B = jax.lax.top_k(logits_BxV, top_k)[0][:, -1]
        logits_BxV = jnp.where(logits_BxV < kth_largest_B[:, None], -jnp.inf, logits_BxV)
      next_B = jax.random.categorical(jax.random.fold_in(rng, position), logits_BxV, axis=-1)
    return buffer_BxL.at[:, position + 1].set(next_B.astype(jnp.int32))

  buffer_BxL = jax.lax.fori_loop(prompt_len - 1, prompt_len - 1 + max_new_tokens, step,
                                 buffer_BxL)
  return buffer_BxL[:, prompt_len:]


# ---------------------------------------------------------------------------------------------
# A trained model from its workdir.


def restore_model(workdir, step: int | None = None,
                  merge_lora: bool = True) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """(model, config) with the variables of the newest checkpoint in `workdir` (or of `step`).

  Only the model's variables are read (not the optimizer state or data position), onto the
  first local device, whatever mesh the run trained on. Frozen parameters, which a run does not
  checkpoint (a LoRA run's base, a frozen backbone), come from where the run took them: its
  `init_from` source, or its seeded initialisation. LoRA adapters are merged into their weights
  (`merge_lora`), so the model is a plain one, ready for generation or export.
  """
  from jaxscale import experiment  # The trainer imports the data pipeline; only needed here.
  from jaxscale.transfer import init_from, lora  # noqa: PLC0415
  workdir = paths.resolve(workdir)
  config = workdir_lib.read_config(workdir)
  manager = checkpointing.make_manager(workdir, config)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {workdir / "checkpoints"}; train first.')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  on_device = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  abstract_model = nnx.eval_shape(lambda: experiment.model_for(config))
  graphdef, abstract_params, abstract_rest = nnx.split(abstract_model, nnx.Param, ...)
  reader = checkpointing.read_only_manager(workdir)
  saved = set(checkpointing.saved_params(reader, step))
  reader.close()
  is_saved = lambda path, _: param_paths.path_name(path) in saved
  params = abstract_params
  if set(param_paths.named_leaves(abstract_params)) - saved:  # Frozen ones: re-derive them.
    # Jitted, as the run initialised them: eager initialisers may round differently.
    params = jax.jit(lambda: nnx.state(experiment.model_for(config), nnx.Param),
                     out_shardings=device)()
    if config.get('init_from', {}).get('workdir'):
      params, _ = init_from.restore_params(config.init_from, params)
  # TrainState fields to read: the saved parameters, and other model variables (e.g. batch-norm
  # statistics) where the model has any.
  fields = {'params': on_device(abstract_params.filter(is_saved))}
  if jax.tree.leaves(abstract_rest):
    fields['model_state'] = on_device(abstract_rest)
  restored = checkpointing.restore_fields(manager, step, fields)
  manager.close()
  if params is not abstract_params:
    restored['params'] = nnx.merge_state(params.filter(nnx.Not(is_saved)), restored['params'])
  model = nnx.merge(graphdef, restored['params'], restored.get('model_state', abstract_rest))
  if merge_lora and lora.has_adapters(model):
    lora.merge(model)
  return model, config


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
