"""Checks a config against the declared schema before anything is built or compiled.

Every error names the offending key and what is allowed, e.g.
`config.optimizer.schedule='cosin' is not allowed; choose one of: constant, cosine, wsd`.
"""

import difflib
import importlib.util
import inspect
import math
import re


from jaxscale import config_base, optim
from jaxscale.hparams import mup
from jaxscale.models import MODELS, attention, mlp, resnet, transformer, vit
from jaxscale.models.layers import DTYPES
from jaxscale.models.layers import REMAT_POLICIES
from jaxscale.models.transformer import MLP_ACTIVATIONS


NONFINITE_POLICIES = ('stop', 'skip')
MEMORY_CHECKS = ('error', 'warn', 'off')
PRUNING_METHODS = ('magnitude', 'nm')
PRUNING_SCOPES = ('layer', 'global')


class ConfigError(ValueError):
  pass


def _unknown_key_error(key: str, allowed: list[str]) -> ConfigError:
  close = difflib.get_close_matches(key, allowed, n=1)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  return ConfigError(f'Unknown config key {key!r}.{hint} Allowed keys: {", ".join(sorted(allowed))}')


def _check_keys_and_types(config):
  schema = config_base.flatten(config_base.get_base_config())
  given = config_base.flatten(config)
  model_keys = {k for k in given if k.startswith('config.model.')}
  for key, value in given.items():
    if key in model_keys:
      continue  # Model keys are checked against the chosen model's constructor.
    if key not in schema:
      raise _unknown_key_error(key, [k for k in schema if not k.startswith('config.model.')])
    expected = type(schema[key])
    ok = isinstance(value, expected) or (expected is float and isinstance(value, int)) or (
        expected is tuple and isinstance(value, list))
    if not ok or (expected is not bool and isinstance(value, bool)):
      raise ConfigError(f'{key}={value!r} has type {type(value).__name__}; expected {expected.__name__}.')


def _check_model_keys(model_config):
  if model_config.name not in MODELS:
    raise ConfigError(f'config.model.name={model_config.name!r} is not a registered model; '
                      f'choose one of: {", ".join(MODELS.names())}')
  params = inspect.signature(MODELS.get(model_config.name).__init__).parameters
  allowed = [p for p in params if p not in ('self', 'rngs')]
  for key in model_config:
    if key != 'name' and key not in allowed:
      raise _unknown_key_error(f'config.model.{key}', [f'config.model.{k}' for k in allowed + ['name']])
  for name, p in params.items():
    if name not in ('self', 'rngs') and p.default is inspect.Parameter.empty and name not in model_config:
      raise ConfigError(f'config.model.{name} is required by model {model_config.name!r}.')


def _check_choice(key: str, value, choices):
  if value not in choices:
    raise ConfigError(f'{key}={value!r} is not allowed; choose one of: {", ".join(sorted(choices))}')


def _check_positive(config, *keys):
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    if value <= 0:
      raise ConfigError(f'config.{key}={value} must be positive.')


def _check_values(config):
  from jaxscale.data import DATASETS  # Imported late: building the registry loads TensorFlow.
  _check_positive(config, 'num_train_steps', 'batch_size', 'log_every_steps', 'eval_every_steps',
                  'num_eval_batches', 'checkpoint_every_steps', 'keep_checkpoints',
                  'dataset.seq_len', 'optimizer.grad_accum_steps', 'optimizer.learning_rate')
  _check_choice('config.optimizer.name', config.optimizer.name, optim.OPTIMIZERS)
  _check_choice('config.optimizer.schedule', config.optimizer.schedule, optim.SCHEDULES)
  _check_choice('config.dataset.name', config.dataset.name, DATASETS.names())
  _check_choice('config.dataset.tokenizer', config.dataset.tokenizer, ('byte', 'sentencepiece'))
  _check_choice('config.nonfinite_policy', config.nonfinite_policy, NONFINITE_POLICIES)
  _check_choice('config.memory_check', config.memory_check, MEMORY_CHECKS)
  from jaxscale.objectives import OBJECTIVES  # noqa: PLC0415
  if config.objective:
    _check_choice('config.objective', config.objective, OBJECTIVES.names())
  _check_choice('config.init_from.missing', config.init_from.missing, ('error', 'init'))
  if config.lora.rank < 0 or not 0 <= config.lora.dropout < 1 or config.lora.alpha <= 0:
    raise ConfigError(f'config.lora: rank={config.lora.rank} must be >= 0 (0 = off), '
                      f'dropout={config.lora.dropout} in [0, 1), alpha={config.lora.alpha} > 0.')
  _check_choice('config.quantization.mode', config.quantization.mode, ('none', 'qat'))
  _check_choice('config.quantization.weight_dtype', config.quantization.weight_dtype,
                ('int8', 'int4'))
  _check_choice('config.quantization.act_dtype', config.quantization.act_dtype, ('int8', ''))
  if not 0 < config.optimizer.layer_decay <= 1:
    raise ConfigError(f'config.optimizer.layer_decay={config.optimizer.layer_decay} must be in '
                      '(0, 1] (1 = no decay).')
  for pair in config.optimizer.lr_multipliers:
    if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], (int, float)):
      raise ConfigError(f'config.optimizer.lr_multipliers entry {pair!r} must be a '
                        "(regex, factor) pair, e.g. (('^head', 10.0),).")
  if not 0 < config.dataset.train_fraction <= 1:
    raise ConfigError(f'config.dataset.train_fraction={config.dataset.train_fraction} must be in '
                      '(0, 1] (the fraction of train labels to use).')
  classes = tuple(config.dataset.classes)
  if classes and (len(classes) < 2 or len(set(classes)) != len(classes) or not all(
      isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)):
    raise ConfigError(f'config.dataset.classes={classes!r} must be () (every class) or at least '
                      'two distinct label ids >= 0, e.g. (5, 6, 7, 8, 9).')
  _check_distill(config)
  _check_pruning(config)
  if config.max_skipped_steps < 0:
    raise ConfigError(f'config.max_skipped_steps={config.max_skipped_steps} must be >= 0.')
  if config.optimizer.warmup_steps < 0 or config.optimizer.warmup_steps >= config.num_train_steps:
    raise ConfigError(f'config.optimizer.warmup_steps={config.optimizer.warmup_steps} must be in '
                      f'[0, num_train_steps={config.num_train_steps}).')
  if config.batch_size % config.optimizer.grad_accum_steps:
    raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by '
                      f'config.optimizer.grad_accum_steps={config.optimizer.grad_accum_steps}.')
  if config.optimizer.grad_accum_steps > 1 and getattr(
      MODELS.get(config.model.name), 'uses_batch_norm', False):
    # Each micro-batch would normalise by its own statistics and move the running averages once
    # per micro-batch: not the step one pass over the whole batch takes.
    raise ConfigError(
        f'config.optimizer.grad_accum_steps={config.optimizer.grad_accum_steps} with '
        f'model {config.model.name!r}, which uses batch norm: its statistics would come from each '
        'micro-batch, not from the whole batch. Set optimizer.grad_accum_steps=1 and fit the batch '
        'with a larger mesh, FSDP or model.dtype=bfloat16.')


def _check_distill(config):
  d = config.distill
  if d.temperature <= 0 or not 0 <= d.alpha <= 1 or d.top_k < 0:
    raise ConfigError(f'config.distill: temperature={d.temperature} must be > 0, alpha={d.alpha} '
                      f'in [0, 1] and top_k={d.top_k} >= 0 (0 = every class or token).')


def _check_pruning(config):
  p = config.pruning
  if not 0 <= p.sparsity < 1:
    raise ConfigError(f'config.pruning.sparsity={p.sparsity} must be in [0, 1) (0 = off).')
  _check_choice('config.pruning.method', p.method, PRUNING_METHODS)
  _check_choice('config.pruning.scope', p.scope, PRUNING_SCOPES)
  if not p.sparsity:
    return
  if p.method == 'nm':
    if not 0 < p.n < p.m:
      raise ConfigError(f'config.pruning: n={p.n} and m={p.m} must satisfy 0 < n < m (e.g. 2:4).')
    if abs(p.sparsity - (1 - p.n / p.m)) > 1e-9:
      raise ConfigError(f'config.pruning.method=nm with n={p.n}, m={p.m} prunes to sparsity '
                        f'{1 - p.n / p.m:g}; set config.pruning.sparsity={1 - p.n / p.m:g}.')
  if p.update_every < 1 or p.start_step < 0 or not 1 <= p.end_step <= config.num_train_steps or (
      p.end_step < p.start_step):
    raise ConfigError(
        f'config.pruning: update_every={p.update_every} must be >= 1 and start_step='
        f'{p.start_step} <= end_step={p.end_step}, with 1 <= end_step <= num_train_steps='
        f'{config.num_train_steps} (end_step is when the final sparsity is reached).')
  for pattern in p.exclude:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f'config.pruning.exclude: {pattern!r} is not a regular expression ({e}).')


def _check_image_dataset(d):
  """The vision keys of config.dataset (they only shape image datasets' training stream)."""
  from jaxscale.data.augment import MAX_RANDAUGMENT_MAGNITUDE  # Late: loads TensorFlow.
  _check_choice('config.dataset.crop', d.crop, ('none', 'pad_and_crop', 'random_resized_crop'))
  _check_choice('config.dataset.loader', d.loader, ('grain', 'tfdata'))
  if d.image_size <= 0:
    raise ConfigError(f'config.dataset.image_size={d.image_size} must be positive.')
  for key in ('crop_padding', 'randaugment_layers', 'mixup_alpha', 'cutmix_alpha'):
    if d[key] < 0:
      raise ConfigError(f'config.dataset.{key}={d[key]} must be >= 0 (0 turns it off).')
  if not 0 <= d.randaugment_magnitude <= MAX_RANDAUGMENT_MAGNITUDE:
    raise ConfigError(f'config.dataset.randaugment_magnitude={d.randaugment_magnitude} must be in '
                      f'[0, {MAX_RANDAUGMENT_MAGNITUDE}].')
  if d.randaugment_layers > 0 and importlib.util.find_spec('keras') is None:
    raise ConfigError(f'config.dataset.randaugment_layers={d.randaugment_layers} needs Keras 3 '
                      '(keras.layers.RandAugment), which is not installed; install keras or set 0.')


def _check_transformer(m):
  _check_choice('config.model.dtype', m.dtype, DTYPES)
  _check_choice('config.model.mlp_activation', m.mlp_activation, MLP_ACTIVATIONS)
  _check_choice('config.model.remat_policy', m.remat_policy, REMAT_POLICIES)
  _check_choice('config.model.attention_impl', m.attention_impl, attention.IMPLEMENTATIONS)
  if m.d_model % m.num_heads or (m.d_model // m.num_heads) % 2:
    raise ConfigError(f'config.model.d_model={m.d_model} must split into config.model.num_heads='
                      f'{m.num_heads} heads of even size (rotary embeddings rotate pairs).')
  values = _model_values(m)
  if values['pooling']:  # '' is the model's default.
    _check_choice('config.model.pooling', values['pooling'], transformer.POOLINGS)
  num_classes = values['num_classes'] or 0  # A text dataset resolves it to None: an LM.
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
    raise ConfigError(f'config.model.num_classes={num_classes!r} must be a non-negative integer '
                      '(0: LM logits over the vocabulary).')


def _check_parametrization(config):
  """μP needs a base width and an optimizer whose multipliers it defines."""
  m = _model_values(config.model)
  _check_choice('config.model.parametrization', m['parametrization'], mup.PARAMETRIZATIONS)
  if m['parametrization'] != 'mup':
    return
  base = m['mup_base_width']
  if isinstance(base, bool) or not isinstance(base, int) or base <= 0:
    raise ConfigError(f"config.model.mup_base_width={base!r} must be a positive integer with "
                      "config.model.parametrization='mup' (the width the hyperparameters were "
                      'tuned at).')
  if config.optimizer.name not in mup.ADAM_LIKE_OPTIMIZERS:
    raise ConfigError(f"config.model.parametrization='mup' defines learning-rate multipliers for "
                      f'config.optimizer.name in {", ".join(mup.ADAM_LIKE_OPTIMIZERS)}, not '
                      f'{config.optimizer.name!r}.')


def _check_init_scale(model_config):
  scale = _model_values(model_config).get('init_scale', 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
    raise ConfigError(f'config.model.init_scale={scale!r} must be a positive number (a factor on '
                      'the initial weights; 1 keeps the model\'s own init).')


def _model_values(model_config) -> dict:
  """The config's model keys over the constructor's defaults (configs may leave defaults out)."""
  params = inspect.signature(MODELS.get(model_config.name).__init__).parameters
  values = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
  return {**values, **model_config}


def _check_positive_ints(m, *names):
  for name in names:
    if isinstance(m[name], bool) or not isinstance(m[name], int) or m[name] <= 0:
      raise ConfigError(f'config.model.{name}={m[name]!r} must be a positive integer.')


def _check_vision_model(config):
  """Value checks for the image classifiers (num_classes/image_size 0 = taken from the data)."""
  m = _model_values(config.model)
  for name in ('num_classes', 'image_size'):
    if isinstance(m[name], bool) or not isinstance(m[name], int) or m[name] < 0:
      raise ConfigError(f'config.model.{name}={m[name]!r} must be a non-negative integer '
                        '(0: take it from the dataset).')
  _check_choice('config.model.dtype', m['dtype'], DTYPES)
  _check_positive_ints(m, 'channels')
  if m['name'] == 'vit':
    _check_positive_ints(m, 'patch_size', 'width', 'depth', 'num_heads', 'mlp_dim')
    _check_choice('config.model.pooling', m['pooling'], vit.POOLINGS)
    _check_choice('config.model.remat_policy', m['remat_policy'], REMAT_POLICIES)
    _check_choice('config.model.attention_impl', m['attention_impl'], attention.IMPLEMENTATIONS)
    if m['width'] % m['num_heads']:
      raise ConfigError(f'config.model.width={m["width"]} must be a multiple of '
                        f'config.model.num_heads={m["num_heads"]}.')
    image_size = m['image_size'] or config.dataset.image_size
    if image_size % m['patch_size']:
      raise ConfigError(f'config.model.patch_size={m["patch_size"]} must divide the image size '
                        f'{image_size} (config.model.image_size, or config.dataset.image_size).')
  elif m['name'] == 'resnet':
    _check_positive_ints(m, 'width')
    if m['depth'] not in resnet.STAGES:
      raise ConfigError(f'config.model.depth={m["depth"]!r} is not allowed; choose one of: '
                        f'{", ".join(map(str, resnet.STAGES))}')
    _check_choice('config.model.stem', m['stem'], resnet.STEMS)
  elif m['name'] == 'mlp':
    _check_choice('config.model.activation', m['activation'], mlp.ACTIVATIONS)
    dims = m['hidden_dims']
    if not isinstance(dims, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
      raise ConfigError(f'config.model.hidden_dims={dims!r} must be a tuple of positive integers '
                        '(layer widths), e.g. (512, 512).')


def check_batch_fits_mesh(config, mesh_shape: dict[str, int], process_count: int):
  """The global (micro-)batch must split evenly over the batch mesh axes and the processes."""
  batch_axes = dict(config.mesh.rules).get('batch') or ()
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  shards = 1
  for axis in batch_axes:
    shards *= mesh_shape[axis]
  micro_batch = config.batch_size // config.optimizer.grad_accum_steps
  if micro_batch % shards or config.batch_size % process_count:
    raise ConfigError(
        f'config.batch_size={config.batch_size} (micro-batch {micro_batch}) must divide evenly '
        f'over the batch mesh axes {batch_axes} of sizes {[mesh_shape[a] for a in batch_axes]} '
        f'({shards} shards) and over {process_count} processes.')


def validate(config, num_devices: int | None = None, process_count: int = 1):
  """Raises ConfigError naming the first bad key; returns quietly when the config is sound."""
  _check_keys_and_types(config)
  _check_model_keys(config.model)
  _check_values(config)
  _check_image_dataset(config.dataset)
  if config.model.name in ('transformer', 'encoder'):
    _check_transformer(config.model)
  elif config.model.name in ('vit', 'resnet', 'mlp'):
    _check_vision_model(config)
  if config.model.name in ('transformer', 'encoder', 'vit'):
    _check_parametrization(config)
  _check_init_scale(config.model)
  if num_devices is not None:
    from jaxscale import sharding
    from jaxscale.sharding import MESH_AXES
    try:
      shape = sharding.mesh_shape(config.mesh, num_devices)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    check_batch_fits_mesh(config, dict(zip(MESH_AXES, shape)), process_count)
