"""Llama-family Hugging Face checkpoints (`config.json` + safetensors) and the transformer's
parameters, in both directions.

The transformer with SwiGLU, no biases, RMSNorm (`x * w`), split-halves RoPE and 1/sqrt(head_dim)
attention is Llama's architecture exactly (grouped-query attention included), so the mapping is
a relayout of each weight: transformers' Linear weights are [out, in], the transformer's
[in, ..., out] with heads as their own axis. RoPE pairs feature i with i + K/2 in both (Llama's
`rotate_half`), so q and k need no permutation.

Reading goes tensor by tensor (`safe_open`), each straight into the new run's sharding
(`jax.make_array_from_callback`): host memory holds about one tensor at a time. Writing streams
each tensor to its safetensors file as it is made, for the same reason.
"""

import dataclasses
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from etils import epath

from jaxscale.checkpoint import init_from
from jaxscale.config.validation import ConfigError
from jaxscale.core import param_paths
from jaxscale.data import hf_tokenizer

CONFIG_FILE = 'config.json'
GENERATION_CONFIG_FILE = 'generation_config.json'
WEIGHTS_FILE = 'model.safetensors'
WEIGHTS_INDEX_FILE = 'model.safetensors.index.json'
ARCHITECTURES = ('LlamaForCausalLM', 'MistralForCausalLM')
MODEL_TYPES = ('llama', 'mistral')
DEFAULT_ROPE_THETA = 10_000.0
# The config keys of the run's model that an import derives (everything else keeps its value).
DERIVED_MODEL_KEYS = ('name', 'vocab_size', 'num_layers', 'd_model', 'num_heads', 'num_kv_heads',
                      'mlp_dim', 'mlp_activation', 'tie_embeddings', 'rope_theta', 'norm_eps')
_SAFETENSORS_DTYPES = {'float32': 'F32', 'bfloat16': 'BF16'}
_NUMPY_DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}
_FLOAT_DTYPES = ('F64', 'F32', 'F16', 'BF16')


class HFError(ConfigError):
  """A checkpoint or run that cannot be converted; the message is one line naming the file or
  the config field (the CLIs print it as such)."""


# ---------------------------------------------------------------------------------------------
# Configs.

def read_hf_config(hf_dir) -> dict:
  """The checkpoint's `config.json`, checked: anything the transformer cannot express exactly is
  refused naming its field."""
  path = epath.Path(hf_dir) / CONFIG_FILE
  if not path.exists():
    raise HFError(f'{path} not found: a Hugging Face model directory holds config.json beside its '
                  'safetensors weights (save_pretrained writes both).')
  try:
    hf = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise HFError(f'{path} is not valid JSON ({e}).') from None
  _check_supported(hf, path)
  return hf


def _check_supported(hf: dict, path):
  architectures = hf.get('architectures') or []
  if not architectures or any(a not in ARCHITECTURES for a in architectures):
    raise HFError(f'{path}: architectures={architectures} is not supported; the import reads '
                  f'{" or ".join(ARCHITECTURES)} checkpoints.')
  if hf.get('model_type') not in MODEL_TYPES:
    raise HFError(f'{path}: model_type={hf.get("model_type")!r} is not supported; the import reads '
                  f'{" or ".join(MODEL_TYPES)} checkpoints.')
  refusals = [
      ('sliding_window', hf.get('sliding_window') is not None,
       'sliding-window attention is not implemented'),
      ('attention_bias', bool(hf.get('attention_bias')), 'attention biases are not implemented'),
      ('mlp_bias', bool(hf.get('mlp_bias')), 'MLP biases are not implemented'),
      ('hidden_act', hf.get('hidden_act', 'silu') != 'silu',
       'only SwiGLU (hidden_act="silu") is implemented'),
      ('rope_scaling', _rope_type(hf.get('rope_scaling')) not in (None, 'default'),
       'only the default rope_type is implemented'),
      ('rope_parameters', _rope_type(hf.get('rope_parameters')) not in (None, 'default'),
       'only the default rope_type is implemented'),
  ]
  refusals += [(key, bool(hf.get(key)), 'mixture-of-experts layers are not implemented')
               for key in hf if re.match(r'num_(local_)?experts', key)]
  num_heads = hf.get('num_attention_heads')
  head_dim = hf.get('head_dim')
  if head_dim is not None and num_heads:
    refusals.append(('head_dim', head_dim != hf.get('hidden_size', 0) // num_heads,
                     'the transformer\'s head_dim is hidden_size / num_attention_heads'))
  for field, refused, why in refusals:
    if refused:
      raise HFError(f'{path}: {field}={hf.get(field)!r} is not supported ({why}).')
  for field in ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads',
                'intermediate_size'):
    if not isinstance(hf.get(field), int) or hf[field] <= 0:
      raise HFError(f'{path}: {field}={hf.get(field)!r} must be a positive integer.')


def _rope_type(rope: dict | None):
  if not rope:
    return None
  return rope.get('rope_type', rope.get('type', 'default'))


def rope_theta(hf: dict) -> float:
  """RoPE's base: `rope_theta`, or transformers >= 5's `rope_parameters['rope_theta']`."""
  if hf.get('rope_theta') is not None:
    return float(hf['rope_theta'])
  return float((hf.get('rope_parameters') or {}).get('rope_theta', DEFAULT_ROPE_THETA))


def model_config_from_hf(hf: dict) -> dict:
  """The run's model keys (config.model.*) of a checked HF config."""
  num_heads = hf['num_attention_heads']
  return {
      'name': 'transformer',
      'vocab_size': hf['vocab_size'],
      'num_layers': hf['num_hidden_layers'],
      'd_model': hf['hidden_size'],
      'num_heads': num_heads,
      'num_kv_heads': hf.get('num_key_value_heads') or num_heads,
      'mlp_dim': hf['intermediate_size'],
      'mlp_activation': 'swiglu',
      # LlamaConfig's default is untied.
      'tie_embeddings': bool(hf.get('tie_word_embeddings', False)),
      'rope_theta': rope_theta(hf),
      'norm_eps': float(hf.get('rms_norm_eps', 1e-6)),
  }


def derive_config(config):
  """`config` (a ConfigDict, changed in place and returned) with its model taken from the
  checkpoint `config.init_from.hf` names, and the keys `hf_tokenizer.import_keys` gives it:
  `dataset.tokenizer` ('hf:DIR' where tokenizer files came with the weights; else an 'hf:'
  tokenizer the config names, or 'none') and
  `export.max_seq_len` (the checkpoint's `max_position_embeddings`). Refuses settings the
  import cannot honour, naming the key."""
  hf_dir = config.init_from.hf
  hf = read_hf_config(hf_dir)
  if config.init_from.workdir:
    raise HFError('config.init_from.hf and config.init_from.workdir are both set; a run starts '
                  'from one of them.')
  model = config.model
  for key, bad, why in (
      ('name', model.get('name') not in ('transformer',), 'an import is a causal LM'),
      ('num_classes', bool(model.get('num_classes')), 'an import is an LM, not a classifier'),
      ('parametrization', model.get('parametrization', 'sp') != 'sp',
       "μP's multipliers are not in a Llama checkpoint; use 'sp'")):
    if bad:
      raise HFError(f'config.model.{key}={model.get(key)!r} cannot take config.init_from.hf '
                    f'({why}).')
  for key, value in model_config_from_hf(hf).items():
    model[key] = value
  keys = hf_tokenizer.import_keys(hf_dir)
  # Weights without a tokenizer keep one the config names for them ('hf:DIR'); else 'none'.
  if keys['dataset.tokenizer'] != hf_tokenizer.NO_TOKENIZER or not hf_tokenizer.hf_dir(
      config.dataset.tokenizer):
    config.dataset.tokenizer = keys['dataset.tokenizer']
  config.export.max_seq_len = keys['export.max_seq_len']
  return config


def check_seq_len(config):
  """A run from `init_from.hf` trains no longer sequences than the checkpoint's positions."""
  limit = config.export.max_seq_len
  if limit and config.dataset.seq_len > limit:
    raise HFError(f'config.dataset.seq_len={config.dataset.seq_len} is longer than '
                  f'{config.init_from.hf}/config.json max_position_embeddings={limit}; set '
                  f'config.dataset.seq_len <= {limit}.')


def hf_config_from_model(model_config, dtype: str, max_position_embeddings: int) -> dict:
  """LlamaForCausalLM's config.json for the run's model; refuses what Llama cannot express."""
  refuse_unexportable(model_config)
  num_heads = model_config.num_heads
  return {
      'architectures': ['LlamaForCausalLM'],
      'model_type': 'llama',
      'vocab_size': model_config.vocab_size,
      'hidden_size': model_config.d_model,
      'intermediate_size': model_config.mlp_dim,
      'num_hidden_layers': model_config.num_layers,
      'num_attention_heads': num_heads,
      'num_key_value_heads': model_config.get('num_kv_heads', 0) or num_heads,
      'head_dim': model_config.d_model // num_heads,
      'hidden_act': 'silu',
      'max_position_embeddings': max_position_embeddings,
      'rms_norm_eps': model_config.get('norm_eps', 1e-6),
      'rope_theta': model_config.rope_theta,
      'rope_parameters': {'rope_theta': model_config.rope_theta, 'rope_type': 'default'},
      'rope_scaling': None,
      'tie_word_embeddings': bool(model_config.tie_embeddings),
      'attention_bias': False,
      'mlp_bias': False,
      'attention_dropout': 0.0,
      'initializer_range': 0.02,
      'dtype': dtype,
      'torch_dtype': dtype,
      'use_cache': True,
  }


def refuse_unexportable(model_config):
  """One-line refusal naming the key of a run the Llama format cannot express."""
  name = model_config.get('name')
  checks = (
      ('name', name != 'transformer',
       "only the causal 'transformer' exports as a Llama model (an encoder does not)"),
      ('num_classes', bool(model_config.get('num_classes')),
       'a classifier head has no Llama counterpart'),
      ('mlp_activation', model_config.get('mlp_activation') != 'swiglu',
       "Llama's MLP is SwiGLU; train with mlp_activation='swiglu'"),
      ('parametrization', model_config.get('parametrization', 'sp') != 'sp',
       "μP's attention scale and readout multiplier have no Llama counterpart; train with 'sp'"),
  )
  for key, refused, why in checks:
    if refused:
      raise HFError(f'config.model.{key}={model_config.get(key)!r} cannot be exported to '
                    f'Hugging Face ({why}).')


# ---------------------------------------------------------------------------------------------
# The weight mapping. Per layer, each of the transformer's block weights and the HF tensors it
# is made of; `_to_hf` and `_from_hf` are each other's inverse.

def _layer(i: int) -> str:
  return f'model.layers.{i}.'


def _hf_names(block_param: str, i: int) -> tuple[str, ...]:
  p = _layer(i)
  attn, mlp = p + 'self_attn.', p + 'mlp.'
  return {
      'attn_norm.scale': (p + 'input_layernorm.weight',),
      'mlp_norm.scale': (p + 'post_attention_layernorm.weight',),
      'qkv_DxTxHxK': (attn + 'q_proj.weight', attn + 'k_proj.weight', attn + 'v_proj.weight'),
      'q_DxHxK': (attn + 'q_proj.weight',),
      'kv_DxTxGxK': (attn + 'k_proj.weight', attn + 'v_proj.weight'),
      'out_HxKxD': (attn + 'o_proj.weight',),
      'mlp_in_DxTxF': (mlp + 'gate_proj.weight', mlp + 'up_proj.weight'),
      'mlp_out_FxD': (mlp + 'down_proj.weight',),
  }[block_param]


_GLOBAL = {'embed_VxD': 'model.embed_tokens.weight', 'final_norm.scale': 'model.norm.weight',
           'unembed_DxV': 'lm_head.weight'}


def _to_hf(param: str, value: np.ndarray) -> tuple[np.ndarray, ...]:
  """One layer's (or a global) weight in HF layout, one array per name of `_hf_names`."""
  d = value.shape[0]
  if param in ('qkv_DxTxHxK', 'kv_DxTxGxK', 'mlp_in_DxTxF'):
    return tuple(value[:, t].reshape(d, -1).T for t in range(value.shape[1]))
  if param == 'q_DxHxK':
    return (value.reshape(d, -1).T,)
  if param == 'out_HxKxD':
    return (value.reshape(-1, value.shape[-1]).T,)
  if param in ('mlp_out_FxD', 'unembed_DxV'):
    return (value.T,)
  return (value,)  # Norm scales, the embedding.


def _from_hf(param: str, tensors: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
  """The inverse of `_to_hf`: one layer's weight of `shape` from its HF tensors."""
  if param in ('qkv_DxTxHxK', 'kv_DxTxGxK', 'mlp_in_DxTxF'):
    return np.stack([t.T.reshape(shape[0], *shape[2:]) for t in tensors], axis=1)
  if param in ('q_DxHxK', 'out_HxKxD'):
    return tensors[0].T.reshape(shape)
  if param in ('mlp_out_FxD', 'unembed_DxV'):
    return tensors[0].T
  return tensors[0]


def _hf_shapes(param: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
  """The HF tensors' shapes of a weight of `shape` (one layer's)."""
  return tuple(t.shape for t in _to_hf(param, np.empty(shape, np.float32)))


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One parameter of the model: its dotted name, and where its HF tensors come from."""
  name: str
  param: str             # The name within its block ('qkv_DxTxHxK') or a global ('embed_VxD').
  layers: tuple | None   # Per layer (a block weight): the layer of each leading index; else None.
  stacked: bool          # A scanned stack: the leading axis is the layer.

  def hf_names(self, layer: int | None) -> tuple[str, ...]:
    return (_GLOBAL[self.param],) if layer is None else _hf_names(self.param, layer)


def _entries(names_and_shapes: dict[str, tuple]) -> dict[str, _Entry]:
  """The mapping entry of each parameter name ('blocks.3.qkv_DxTxHxK', 'blocks.qkv_DxTxHxK' for
  a scanned stack, 'embed_VxD', ...); a name with no HF counterpart is left out."""
  entries = {}
  for name, shape in names_and_shapes.items():
    if name in _GLOBAL:
      entries[name] = _Entry(name, name, None, False)
      continue
    match = re.fullmatch(r'blocks\.(?:(\d+)\.)?(\w+(?:\.scale)?)', name)
    if not match:
      continue
    try:
      _hf_names(match.group(2), 0)
    except KeyError:
      continue
    if match.group(1) is None:  # Scanned: layer l is row l of the leading axis.
      entries[name] = _Entry(name, match.group(2), tuple(range(shape[0])), True)
    else:
      entries[name] = _Entry(name, match.group(2), (int(match.group(1)),), False)
  return entries


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint.

class Checkpoint:
  """The tensors of an HF model directory (`model.safetensors`, or shards listed in
  `model.safetensors.index.json`), read one at a time as fp32 numpy."""

  def __init__(self, hf_dir):
    self.dir = epath.Path(hf_dir)
    index = self.dir / WEIGHTS_INDEX_FILE
    single = self.dir / WEIGHTS_FILE
    if index.exists():
      try:
        self.files = dict(json.loads(index.read_text())['weight_map'])
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HFError(f'{index} has no valid weight_map ({e}).') from None
    elif single.exists():
      self.files = None
    else:
      raise HFError(f'{self.dir} holds neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}: save the '
                    'model with save_pretrained(safe_serialization=True).')
    self._open = {}
    if self.files is None:
      self.files = {name: WEIGHTS_FILE for name in self._handle(WEIGHTS_FILE).keys()}

  def _handle(self, file: str):
    if file not in self._open:
      path = self.dir / file
      if not path.exists():
        raise HFError(f'{path} (listed in {WEIGHTS_INDEX_FILE}) not found.')
      safe_open = _safe_open()
      try:
        # 'flax' reads bfloat16 as well (NumPy has no such dtype); on the host CPU.
        with jax.default_device(jax.devices('cpu')[0]):
          self._open[file] = safe_open(os.fspath(path), framework='flax')
      except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise HFError(f'{path} is not a readable safetensors file ({e}).') from None
    return self._open[file]

  def names(self) -> set[str]:
    return set(self.files)

  def info(self, name: str) -> tuple[tuple[int, ...], str]:
    """(shape, safetensors dtype) of a tensor, without reading it."""
    piece = self._handle(self._file(name)).get_slice(name)
    return tuple(piece.get_shape()), piece.get_dtype()

  def read(self, name: str) -> np.ndarray:
    with jax.default_device(jax.devices('cpu')[0]):
      tensor = self._handle(self._file(name)).get_tensor(name)
    return np.asarray(tensor.astype(jnp.float32))

  def _file(self, name: str) -> str:
    if name not in self.files:
      raise HFError(f'{self.dir}: tensor {name!r} is missing from the checkpoint.')
    return self.files[name]


def _safe_open():
  try:
    from safetensors import safe_open  # noqa: PLC0415  (the 'hf' extra, only when reading)
  except ImportError:
    raise HFError("Reading safetensors needs the safetensors package: pip install "
                  "'jaxscale[hf]'.") from None
  return safe_open


def _check_tensor(checkpoint: Checkpoint, name: str, expected: tuple[int, ...]):
  shape, dtype = checkpoint.info(name)
  if dtype not in _FLOAT_DTYPES:
    raise HFError(f'{checkpoint.dir}: tensor {name!r} has dtype {dtype}; a float type '
                  f'({", ".join(_FLOAT_DTYPES)}) is needed.')
  if shape != tuple(expected):
    raise HFError(f'{checkpoint.dir}: tensor {name!r} has shape {list(shape)}, but config.json '
                  f'implies {list(expected)}.')


@dataclasses.dataclass
class ImportReport:
  loaded: list[str]
  new: list[str]
  unused: list[str]


def load_params(hf_dir, params, *, skip=lambda name: False):
  """(params with the checkpoint's values, ImportReport). `params` is the new model's sharded
  nnx.State; each value is built with `jax.make_array_from_callback` in that leaf's sharding,
  reading only the tensors a device's block needs. Parameters `skip(name)` names (e.g. LoRA
  adapters) keep their values; a parameter with no HF counterpart is reported as new."""
  checkpoint = Checkpoint(hf_dir)
  leaves = param_paths.named_leaves(params)
  shapes = {name: param_paths.shape_of(leaf) for name, leaf in leaves.items()}
  entries = {n: e for n, e in _entries(shapes).items() if not skip(n)}
  used = set()
  for entry in entries.values():  # Every shape is checked before anything is read.
    core_shape = shapes[entry.name][1:] if entry.stacked else shapes[entry.name]
    for layer in entry.layers or (None,):
      for hf_name, hf_shape in zip(entry.hf_names(layer), _hf_shapes(entry.param, core_shape)):
        _check_tensor(checkpoint, hf_name, hf_shape)
        used.add(hf_name)
  reader = _LayerReader(checkpoint)

  def value(name, leaf):
    if name not in entries:
      return leaf.get_value()
    # A Variable's value: an array, or a ShapeDtypeStruct with its sharding (nothing allocated).
    entry, array = entries[name], leaf.get_value()

    def block(index):
      return reader.block(entry, array.shape, index)

    return jax.make_array_from_callback(array.shape, array.sharding, block).astype(array.dtype)

  loaded = param_paths.map_named(value, params)
  unused = sorted(n for n in checkpoint.names() - used if not n.endswith('rotary_emb.inv_freq'))
  return loaded, ImportReport(loaded=sorted(entries),
                              new=sorted(n for n in leaves if n not in entries and not skip(n)),
                              unused=unused)


def restore_params(init_config, params):
  """(params, init_from.Report) for `config.init_from.hf`: every weight from the checkpoint;
  `init_config.reinit` (e.g. LoRA adapters) keep their fresh values."""
  skip = lambda name: param_paths.matches(name, init_config.reinit)
  params, imported = load_params(init_config.hf, params, skip=skip)
  if imported.new and init_config.missing != 'init':
    raise init_from.InitFromError(
        f'init_from.hf {init_config.hf}: no weights for {", ".join(imported.new)}; name them in '
        '--config.init_from.reinit or pass --config.init_from.missing=init.')
  reinitialised = [n for n in param_paths.named_leaves(params) if skip(n)]
  return params, init_from.Report(
      source=str(init_config.hf), step=0, loaded=imported.loaded, reinitialised=reinitialised,
      new=imported.new, unused=imported.unused, shape_mismatches={})


class _LayerReader:
  """Builds a device's block of a parameter from its HF tensors, keeping only the last layer's
  weight it assembled (devices ask for blocks of the same weight one after another)."""

  def __init__(self, checkpoint: Checkpoint):
    self.checkpoint = checkpoint
    self._last = (None, None)

  def _layer_weight(self, entry: _Entry, layer, core_shape):
    key = (entry.name, layer)
    if self._last[0] != key:
      self._last = (None, None)  # Free the previous weight before reading the next.
      tensors = tuple(self.checkpoint.read(n) for n in entry.hf_names(layer))
      self._last = (key, _from_hf(entry.param, tensors, core_shape).astype(np.float32))
    return self._last[1]

  def block(self, entry: _Entry, shape, index) -> np.ndarray:
    if not entry.stacked:
      layer = entry.layers[0] if entry.layers else None
      return self._layer_weight(entry, layer, shape)[index]
    rows = range(*index[0].indices(shape[0]))
    return np.stack([self._layer_weight(entry, l, shape[1:])[index[1:]] for l in rows])


# ---------------------------------------------------------------------------------------------
# Writing a checkpoint.

def hf_tensors(params):
  """(HF name, shape, function returning the tensor) of every weight of a model's parameters
  (an nnx.State on one device), in the checkpoint's order; nothing is computed until asked."""
  leaves = param_paths.named_leaves(params)
  entries = _entries({n: param_paths.shape_of(l) for n, l in leaves.items()})
  out = []
  for name, entry in entries.items():
    core_shape = leaves[name].shape[1:] if entry.stacked else leaves[name].shape
    hf_shapes = _hf_shapes(entry.param, core_shape)
    for layer_row, layer in enumerate(entry.layers or (None,)):
      for part, (hf_name, hf_shape) in enumerate(zip(entry.hf_names(layer), hf_shapes)):
        def make(leaf=leaves[name], row=layer_row if entry.stacked else None, part=part,
                 param=entry.param):
          value = leaf[...] if row is None else leaf[...][row]
          return _to_hf(param, np.asarray(value))[part]
        out.append((hf_name, hf_shape, make))
  return sorted(out, key=lambda t: _sort_key(t[0]))


def _sort_key(name: str):
  return [int(p) if p.isdigit() else p for p in name.split('.')]


def write_safetensors(hf_dir, tensors, *, dtype: str, max_shard_size: int) -> list[str]:
  """Writes `tensors` ((name, shape, make) as from `hf_tensors`) as safetensors files of at most
  `max_shard_size` bytes each (a larger tensor gets a file of its own), with the index
  transformers reads when there is more than one. Each tensor is made and written on its own,
  so memory holds one at a time. Returns the files written."""
  itemsize = np.dtype(_NUMPY_DTYPES[dtype]).itemsize
  shards, current, current_bytes = [], [], 0
  for name, shape, make in tensors:
    size = math.prod(shape) * itemsize
    if current and current_bytes + size > max_shard_size:
      shards.append(current)
      current, current_bytes = [], 0
    current.append((name, shape, make))
    current_bytes += size
  if current:
    shards.append(current)
  hf_dir = epath.Path(hf_dir)
  if len(shards) == 1:
    file_names = [WEIGHTS_FILE]
  else:
    file_names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  weight_map, total = {}, 0
  for file_name, shard in zip(file_names, shards):
    total += _write_file(hf_dir / file_name, shard, dtype)
    weight_map.update({name: file_name for name, _, _ in shard})
  if len(shards) > 1:
    (hf_dir / WEIGHTS_INDEX_FILE).write_text(json.dumps(
        {'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=2) + '\n')
  return file_names


def _write_file(path, shard, dtype: str) -> int:
  """One safetensors file, streamed: the header (every tensor's dtype, shape and byte range),
  then each tensor's bytes as it is made. Returns the bytes of tensor data."""
  np_dtype = _NUMPY_DTYPES[dtype]
  itemsize = np.dtype(np_dtype).itemsize
  header, offset = {'__metadata__': {'format': 'pt'}}, 0
  for name, shape, _ in shard:
    size = math.prod(shape) * itemsize
    header[name] = {'dtype': _SAFETENSORS_DTYPES[dtype], 'shape': list(shape),
                    'data_offsets': [offset, offset + size]}
    offset += size
  header_bytes = json.dumps(header, separators=(',', ':')).encode()
  header_bytes += b' ' * (-len(header_bytes) % 8)  # The data starts 8-byte aligned.
  with open(os.fspath(path), 'wb') as f:
    f.write(len(header_bytes).to_bytes(8, 'little'))
    f.write(header_bytes)
    for name, shape, make in shard:
      tensor = np.ascontiguousarray(make().astype(np_dtype))
      if tensor.shape != tuple(shape):
        raise AssertionError(f'{name}: made {tensor.shape}, declared {shape}')
      f.write(tensor.tobytes())
      del tensor
  return offset
