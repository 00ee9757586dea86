"""A trained model as portable files that load without jaxscale (`python -m jaxscale.export`).

  python -m jaxscale.export --workdir workdirs/default --out exported/default
  python -m jaxscale.export --workdir workdirs/mlp_digits --out exported/mlp --format savedmodel

For the newest checkpoint (LoRA adapters merged), DIR receives:
- `forward.bin`: a serialized `jax.export.Exported` (StableHLO) of `forward(params, inputs) ->
  logits` in eval mode, with a symbolic batch dimension, lowered for cpu, cuda and tpu. `params`
  is a flat dict of arrays keyed by '/'-joined variable path ('blocks/0/qkv_DxTxHxK'; batch-norm
  statistics included), `inputs` images [b, H, W, C] float32 or token ids [b, l] int32 of any
  length l up to `max_seq_len` (`--max_seq_len`, else config.export.max_seq_len, else the
  training seq_len; a text classifier's padding mask is read off its PAD ids).
- language models also `prefill.bin` (`prefill(params, tokens [b, p], first [b]) -> (logits
  [b, V], keys, values)`: left-padded prompts of any length p up to max_len, real tokens from
  slot first[b]) and `decode.bin`
  (`decode(params, token [b], keys, values, first [b], length []) -> (logits, keys, values)`),
  over a KV cache of `max_len` slots (jaxscale.models.kv_cache describes its layout).
- `params.npz`: that dict; `manifest.json`: each function's input and output shapes and dtypes,
  the vocabulary or class names, the run's config and the jax version that wrote the files.
- with `--format savedmodel`, classifiers only: `savedmodel/`, a TensorFlow SavedModel (via
  orbax-export) whose `serving_default` signature maps `inputs` to `logits`, for TF Serving.

JAX keeps deserializing an artifact for a limited compatibility window (about six months of
releases, see jax.export's docs); re-export from the workdir after upgrading past it.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxscale.checkpoint import restore
from jaxscale.config import config_base
from jaxscale.core import param_paths, paths
from jaxscale.data import special_tokens
from jaxscale.metrics import flops
from jaxscale.models.kv_cache import KVCache

PLATFORMS = ('cpu', 'cuda', 'tpu')
FORMATS = ('jax', 'savedmodel')


def flat_params(state: nnx.State) -> tuple[dict[str, np.ndarray], callable]:
  """(params, unflatten): every model variable as a numpy array keyed by its '/'-joined path, and
  the function that turns such a dict (of arrays or tracers) back into `state`'s structure."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  names = [param_paths.path_name(path).replace('.', '/') for path, _ in leaves]
  params = {name: np.asarray(leaf) for name, (_, leaf) in zip(names, leaves)}

  def unflatten(flat: dict):
    return jax.tree_util.tree_unflatten(treedef, [flat[name] for name in names])

  return params, unflatten


def model_kind(model, config) -> str:
  """'lm' (a causal token model), 'token_model' (an encoder's per-token logits),
  'text_classifier' or 'image_classifier'."""
  if 'vocab_size' not in config.model:
    return 'image_classifier'
  if model.num_classes:
    return 'text_classifier'
  return 'lm' if model.causal else 'token_model'


def input_spec(model, config, batch, length=None) -> jax.ShapeDtypeStruct:
  """The forward's input: images [batch, H, W, C], or token ids [batch, length] (default the
  training seq_len)."""
  kind = model_kind(model, config)
  if kind == 'image_classifier':
    kwargs = flops.model_kwargs(config)
    size, channels = kwargs.image_size, getattr(kwargs, 'channels', 3)
    return jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
  return jax.ShapeDtypeStruct((batch, length or config.dataset.seq_len), jnp.int32)


def symbolic_batch_and_length(max_seq_len: int):
  """Symbolic dimensions `b` (any batch) and `l` (any length from 1 to max_seq_len)."""
  return jax.export.symbolic_shape('b, l', constraints=(f'l <= {max_seq_len}',))


def model_functions(model, config, *, max_len: int,
                    max_seq_len: int | None = None) -> dict[str, tuple]:
  """{name: (function of (params, *args), arg ShapeDtypeStructs, arg names, output names)} to
  export, with a symbolic batch dimension `b` and, for token models, a symbolic length `l` of
  at most `max_seq_len` (default `config_base.max_seq_len(config)`) for the forward."""
  model.eval()
  graphdef, state = nnx.split(model)
  params, unflatten = flat_params(state)
  build = lambda flat: nnx.merge(graphdef, unflatten(flat))
  kind = model_kind(model, config)
  if kind == 'image_classifier':  # (A scope's constraints must concern its function's inputs.)
    (batch,), length = jax.export.symbolic_shape('b'), None
  else:
    batch, length = symbolic_batch_and_length(max_seq_len or config_base.max_seq_len(config))
  (prefill_batch, prompt_len) = jax.export.symbolic_shape('b, p', constraints=(
      f'p <= {max_len}',))
  pad_id = special_tokens.after(config.model.vocab_size - 3).pad if kind == 'text_classifier' else 0

  def forward(flat, inputs):
    if kind == 'text_classifier':  # The pipelines' input_mask is exactly "not PAD".
      return build(flat)(inputs, inputs != pad_id)
    return build(flat)(inputs)

  functions = {'forward': (forward, (input_spec(model, config, batch, length),), ('inputs',),
                           ('logits',))}
  if kind == 'lm':
    def prefill(flat, tokens_BxP, first_B):
      lm = build(flat)
      logits_BxPxV, cache = lm.extend(tokens_BxP, lm.init_cache(tokens_BxP.shape[0], max_len,
                                                                 first_B))
      return logits_BxPxV[:, -1], cache.keys, cache.values

    def decode(flat, token_B, keys, values, first_B, length):
      cache = KVCache(keys=keys, values=values, first_B=first_B, length=length)
      logits_Bx1xV, cache = build(flat).extend(token_B[:, None], cache)
      return logits_Bx1xV[:, 0], cache.keys, cache.values

    # Each function's symbolic dimensions come from one scope, whose constraints must all
    # concern its own arguments: decode has no length, so its batch is a scope of its own.
    (batch,) = jax.export.symbolic_shape('b')
    cache_shape = (model.num_layers, batch, max_len, model.num_kv_heads, model.head_dim)
    cache_spec = jax.ShapeDtypeStruct(cache_shape, model.dtype)
    first = jax.ShapeDtypeStruct((batch,), jnp.int32)
    # Prompts of any length that fits the cache (a scope of their own: p's bound is max_len).
    functions['prefill'] = (prefill, (input_spec(model, config, prefill_batch, prompt_len),
                                      jax.ShapeDtypeStruct((prefill_batch,), jnp.int32)),
                            ('tokens', 'first'), ('logits', 'keys', 'values'))
    functions['decode'] = (decode, (jax.ShapeDtypeStruct((batch,), jnp.int32), cache_spec,
                                    cache_spec, first, jax.ShapeDtypeStruct((), jnp.int32)),
                           ('token', 'keys', 'values', 'first', 'length'),
                           ('logits', 'keys', 'values'))
  return params, functions


def _describe(avals, names) -> list[dict]:
  return [{'name': name, 'shape': [d if isinstance(d, int) else str(d) for d in aval.shape],
           'dtype': str(aval.dtype)} for name, aval in zip(names, avals)]


def class_names(workdir, num_classes: int) -> list[str]:
  """The eval report's class names where the run wrote one, else '0', '1', ..."""
  report = workdir / 'eval_report.json'
  if report.exists():
    names = json.loads(report.read_text()).get('class_names')
    if names and len(names) == num_classes:
      return [str(n) for n in names]
  return [str(i) for i in range(num_classes)]


def export_workdir(workdir, out, *, formats=('jax',), step: int | None = None,
                   max_len: int | None = None, max_seq_len: int | None = None) -> dict:
  """Writes the newest (or `step`'s) checkpoint of `workdir` to `out`; returns the manifest.
  `max_len` (language models): the KV cache's slots, prompt plus new tokens (default twice the
  training seq_len). `max_seq_len` (token models): the longest input the forward takes (default
  config.export.max_seq_len, else the training seq_len)."""
  unknown = set(formats) - set(FORMATS)
  if unknown:
    raise ValueError(f'Unknown export format(s) {sorted(unknown)}; choose from {FORMATS}.')
  workdir, out = paths.resolve(workdir), paths.resolve(out)
  model, config = restore.restore_model(workdir, step)
  kind = model_kind(model, config)
  if 'savedmodel' in formats and kind not in ('image_classifier', 'text_classifier'):
    raise ValueError(f'--format savedmodel exports classifiers; this run is a {kind}. Use the '
                     'default format (jax.export), which covers language models.')
  max_len = max_len or 2 * config.dataset.seq_len
  max_seq_len = max_seq_len or config_base.max_seq_len(config)
  if kind != 'image_classifier' and max_seq_len < 1:
    raise ValueError(f'max_seq_len={max_seq_len} must be at least 1 token.')
  params, functions = model_functions(model, config, max_len=max_len, max_seq_len=max_seq_len)
  out.mkdir(parents=True, exist_ok=True)
  np.savez(out / 'params.npz', **params)
  manifest = {
      'model': config.model.name, 'kind': kind, 'jax_version': jax.__version__,
      'platforms': list(PLATFORMS), 'params': 'params.npz', 'functions': {},
      'config': config.to_dict(),
      'params_shapes': {k: {'shape': list(v.shape), 'dtype': str(v.dtype)}
                        for k, v in params.items()}}
  for name, (fn, arg_specs, arg_names, out_names) in functions.items():
    param_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()}
    exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(param_specs, *arg_specs)
    (out / f'{name}.bin').write_bytes(exported.serialize())
    manifest['functions'][name] = {
        'file': f'{name}.bin', 'inputs': _describe(exported.in_avals[len(params):], arg_names),
        'outputs': _describe(exported.out_avals, out_names),
        'calling_convention_version': exported.calling_convention_version}
  if kind == 'lm':
    manifest['max_len'] = max_len
  if kind != 'image_classifier':
    manifest['max_seq_len'] = max_seq_len
  if kind in ('lm', 'token_model'):
    manifest['vocab'] = {'tokenizer': config.dataset.tokenizer,
                         'vocab_size': config.model.vocab_size}
  else:
    manifest['class_names'] = class_names(workdir, config.model.num_classes)
  if kind == 'text_classifier':
    specials = special_tokens.after(config.model.vocab_size - 3)
    manifest['vocab'] = {'tokenizer': config.dataset.tokenizer, 'vocab_size': specials.vocab_size,
                         'pad_id': specials.pad, 'cls_id': specials.cls}
  if 'savedmodel' in formats:
    from jaxscale.inference import (  # noqa: PLC0415  (loads TensorFlow and orbax-export)
        export_savedmodel)
    fn = functions['forward'][0]
    # Fixed length (the training seq_len): jax2tf's conversion is polymorphic in the batch only.
    export_savedmodel.save(fn, params, input_spec(model, config, 1), out / 'savedmodel')
    manifest['savedmodel'] = 'savedmodel'
  (out / 'manifest.json').write_text(json.dumps(manifest, indent=2, default=str))
  return manifest
