"""Exact parameter counts, training FLOPs, and model FLOP utilisation (MFU).

One convention for every run: model FLOPs are the FLOPs of the matmuls, 2 per multiply-add:
projections, the logits, and attention's QK^T and AV over the full L x L score matrix (XLA
computes the masked half too, so this is what the hardware does; causal and bidirectional
attention cost the same). A transformer classifier (`num_classes` > 0) has no per-token logits:
its head (and mean pooling's masked sum) runs once per sequence, on the pooled vector.
Elementwise work (norms, softmax, activations, the optimizer) is left out.

Training: a matmul of forward cost F costs F forward, F for its input gradient where one is
needed (some trained parameter lies below it) and F for its weight gradient where the weight
trains; everything training, 3x the forward. Frozen parameters skip their weight gradients (and
the input gradients below the lowest trained parameter), and a LoRA adapter counts as Hu et al.
compute it, x A then (x A) B beside the frozen weight (`train_flops_per_example`; exact for the
transformer family, whose tests equal the matmul FLOPs jax traces in the step). XLA's cost
analysis of the compiled step (`compiled_flops`) is reported beside it, never instead of it: it
adds elementwise work, rematerialised forwards and a merged LoRA weight's full gradient.

Vision models count every convolution and matmul the same way (a conv is 2 * output pixels *
kernel area * input channels * output channels). Their first layer reads the pixels, whose
gradient nobody asks for, so its backward is the weight gradient only: training costs 3x the
forward pass minus one forward of that layer. (An MLP's first layer can hold most of its FLOPs,
so "3x the forward" would overstate its cost by up to a third.) Convolutions count every kernel
tap, zero padding included, as published FLOP counts do and the hardware computes; XLA's cost model
skips taps that fall on padding, so it reads lower on small feature maps.

MFU divides the analytic FLOP/s by the vendor's dense peak for the arithmetic the run's matmuls
take (`peak_flops_per_device`): the compute dtype, float32 following JAX's matmul precision.
"""

import dataclasses
import inspect
import types

import jax

from jaxscale.core import param_paths
from jaxscale.core.registry import Registry
from jaxscale.models import MODELS, lora, resnet


def _num_classes(model_config) -> int:
  """Classes of a transformer's classification head; 0 (or None, unresolved text) for an LM."""
  return getattr(model_config, 'num_classes', 0) or 0


def _head_dims(model_config) -> tuple[int, int]:
  """(query width, key/value width): H * head_dim, and fewer key/value heads under GQA."""
  d, heads = model_config.d_model, model_config.num_heads
  kv_heads = getattr(model_config, 'num_kv_heads', 0) or heads
  return d, kv_heads * (d // heads)


def _block_matmul_params(model_config) -> int:
  d, f = model_config.d_model, model_config.mlp_dim
  q, kv = _head_dims(model_config)
  mlp_matrices = 3 if model_config.mlp_activation == 'swiglu' else 2
  return d * (2 * q + 2 * kv) + mlp_matrices * d * f  # Q, K, V, output projection; the MLP.


def count_params(model_config, vocab_size: int) -> tuple[int, int]:
  """(total, non_embedding) parameter counts of the transformer.

  Non-embedding excludes the token embedding and, when untied, the unembedding matrix
  (Kaplan et al. 2020's N); norms, all block weights and a classifier's head are included.
  """
  d, num_classes = model_config.d_model, _num_classes(model_config)
  # A classifier has no unembedding, tied or not.
  embedding = vocab_size * d * (1 if model_config.tie_embeddings or num_classes else 2)
  norms = (2 * model_config.num_layers + 1) * d
  head = d * num_classes + num_classes
  non_embedding = model_config.num_layers * _block_matmul_params(model_config) + norms + head
  return embedding + non_embedding, non_embedding


def forward_flops_terms(model_config, seq_len: int, vocab_size: int) -> dict[str, int]:
  """Forward FLOPs per token of each matmul of the transformer, summed over its layers."""
  d, f, layers = model_config.d_model, model_config.mlp_dim, model_config.num_layers
  q, kv = _head_dims(model_config)
  gates = 2 if model_config.mlp_activation == 'swiglu' else 1
  return {
      'qkv': layers * 2 * d * (q + 2 * kv),
      'attention_logits': layers * 2 * seq_len * q,  # QK^T: each query against all L keys.
      'attention_values': layers * 2 * seq_len * q,  # Probabilities times V.
      'attention_out': layers * 2 * q * d,
      'mlp_in': layers * 2 * d * f * gates,
      'mlp_out': layers * 2 * f * d,
      'logits': 0 if _num_classes(model_config) else 2 * d * vocab_size,  # A head is per sequence.
  }


def forward_flops_per_token(model_config, seq_len: int, vocab_size: int) -> float:
  return float(sum(forward_flops_terms(model_config, seq_len, vocab_size).values()))


def train_flops_per_token(model_config, seq_len: int, vocab_size: int) -> float:
  """Forward + backward FLOPs per trained token, every parameter training."""
  return 3.0 * forward_flops_per_token(model_config, seq_len, vocab_size)


def _head_flops(model_config, seq_len: int) -> int:
  """Forward FLOPs per sequence of a classifier: mean pooling's masked sum (an einsum), the head."""
  d, k = model_config.d_model, _num_classes(model_config)
  pooling = 2 * seq_len * d if k and getattr(model_config, 'pooling', '') == 'mean' else 0
  return pooling + 2 * d * k


def _lora_slots(config) -> dict[str, tuple]:
  """Weight attribute -> its slots with an adapter (() for the whole weight)."""
  if not config.get('lora') or not config.lora.rank:
    return {}
  attributes = ('qkv_DxTxHxK', 'q_DxHxK', 'kv_DxTxGxK', 'out_HxKxD', 'mlp_in_DxTxF', 'mlp_out_FxD')
  slots = {a: lora.adapted_slots(a, config.lora.targets) for a in attributes}
  return {a: () if s is None else s for a, s in slots.items() if s != ()}


def transformer_train_flops(config) -> float:
  """Training FLOPs per example of the transformer as configured to train.

  Each matmul of forward cost F costs F forward, F for its input gradient where one is needed
  (some trained parameter lies below it), and F for its weight gradient where the weight trains.
  Every parameter training, that is 3x the forward. A LoRA adapter (Hu et al.: x A B, rank r)
  adds the same rule for its two matmuls, its base weight frozen.
  """
  m, tokens = config.model, config.dataset.seq_len
  d, f = m.d_model, m.mlp_dim
  q_width, kv_width = _head_dims(m)
  rank, lora_slots = (config.lora.rank if config.get('lora') else 0), _lora_slots(config)
  trains = lambda name: not param_paths.is_frozen(name, config.optimizer)
  total = 0

  def matmul(forward, weight_trains, input_grad):
    nonlocal total
    total += forward * (1 + bool(input_grad) + bool(weight_trains))

  def projection(name, attribute, slot, d_in, d_out, input_grad) -> bool:
    """One projection over the sequence (a slot of a fused weight) and its adapter; whether
    either trains."""
    weight_trains = trains(name)
    matmul(2 * tokens * d_in * d_out, weight_trains, input_grad)
    adapted = attribute in lora_slots and (not lora_slots[attribute]
                                           or slot in lora_slots[attribute])
    if adapted:  # x A, then (x A) B; A's and B's weight gradients always.
      matmul(2 * tokens * d_in * rank, True, input_grad)
      matmul(2 * tokens * rank * d_out, True, True)
    return weight_trains or adapted

  # Whether the residual stream's gradient is needed: some parameter below it trains.
  need = trains('embed_VxD')
  for layer in range(m.num_layers):
    p = 'blocks.' if m.scan_layers else f'blocks.{layer}.'
    need_h = need or trains(p + 'attn_norm.scale')
    if kv_width == q_width:  # One fused weight, or under GQA the queries' own and a fused K, V.
      weights = [('qkv_DxTxHxK', slot) for slot in range(3)]
    else:
      weights = [('q_DxHxK', None), ('kv_DxTxGxK', 0), ('kv_DxTxGxK', 1)]
    need_q, need_k, need_v = (
        projection(p + attribute, attribute, slot, d, width, need_h) or need_h
        for (attribute, slot), width in zip(weights, (q_width, kv_width, kv_width)))
    attention = 2 * tokens * tokens * q_width               # QK^T, and AV, each.
    total += attention * (1 + need_q + need_k)             # Forward; dQ, dK.
    need_scores = need_q or need_k
    total += attention * (1 + need_scores + need_v)        # Forward; dP, dV.
    need_attention = need_scores or need_v
    out_trains = projection(p + 'out_HxKxD', 'out_HxKxD', None, q_width, d, need_attention)
    need = need or need_attention or out_trains
    need_h = need or trains(p + 'mlp_norm.scale')
    gates = 2 if m.mlp_activation == 'swiglu' else 1
    mlp_in = [projection(p + 'mlp_in_DxTxF', 'mlp_in_DxTxF', slot, d, f, need_h)
              for slot in range(gates)]
    need_f = need_h or any(mlp_in)
    out_trains = projection(p + 'mlp_out_FxD', 'mlp_out_FxD', None, f, d, need_f)
    need = need or need_f or out_trains
  need = need or trains('final_norm.scale')
  num_classes = _num_classes(m)
  if num_classes:  # Once per sequence: the pooling's einsum (no weight), the head.
    total += (_head_flops(m, tokens) - 2 * d * num_classes) * (1 + need)
    matmul(2 * d * num_classes, trains('head_DxK'), need)
  else:
    readout = 'embed_VxD' if m.tie_embeddings else 'unembed_DxV'
    matmul(2 * tokens * d * m.vocab_size, trains(readout), need)
  return float(total)


@dataclasses.dataclass(frozen=True)
class Accounting:
  """A model's size and what one training example costs: the numbers a scaling fit needs."""
  params_total: int
  params_non_embedding: int     # Kaplan's N for LMs; equal to params_total for classifiers.
  train_flops_per_example: float
  tokens_per_example: int       # Sequence length for LMs; 0 for classifiers (one image each).
  # One forward pass (inference, a distillation teacher). Not train / 3: a vision model's
  # backward skips its first layer's input gradient.
  forward_flops_per_example: float


def _transformer_accounting(config) -> Accounting:
  """The decoder and the encoder alike (attention costs the same either way)."""
  model, seq_len = config.model, config.dataset.seq_len
  total, non_embedding = count_params(model, model.vocab_size)
  per_token = train_flops_per_token(model, seq_len, model.vocab_size)
  head = _head_flops(model, seq_len)  # Once per sequence.
  pooling = head - 2 * model.d_model * _num_classes(model)  # No weight: no weight gradient.
  forward = seq_len * forward_flops_per_token(model, seq_len, model.vocab_size) + head
  train = seq_len * per_token + 3.0 * head - pooling
  return Accounting(total, non_embedding, train, seq_len, float(forward))


@dataclasses.dataclass(frozen=True)
class VisionCost:
  """Parameters and forward FLOPs per image of a classifier, and the forward FLOPs of the layer
  that reads the pixels (its input gradient is never computed)."""
  params: int
  forward_flops: float
  first_layer_flops: float

  @property
  def train_flops(self) -> float:
    return 3.0 * self.forward_flops - self.first_layer_flops


def vit_cost(m) -> VisionCost:
  d, f, k, p = m.width, m.mlp_dim, m.num_classes, m.patch_size
  patch_dim = p * p * m.channels
  num_patches = (m.image_size // p) ** 2
  tokens = num_patches + (m.pooling == 'cls')
  block_matmul = 4 * d * d + 2 * d * f  # Q, K, V and output projections; the MLP.
  block_params = block_matmul + 3 * d + d + f + d + 4 * d  # Their biases; two LayerNorms.
  params = (patch_dim * d + d + (d if m.pooling == 'cls' else 0) + tokens * d
            + m.depth * block_params + 2 * d + d * k + k)
  patch_flops = 2 * num_patches * patch_dim * d
  attention = 2 * (2 * tokens * tokens * d)  # QK^T and AV over all token pairs.
  blocks = m.depth * (2 * tokens * block_matmul + attention)
  return VisionCost(params, float(patch_flops + blocks + 2 * d * k), float(patch_flops))


def _conv_out(size: int, kernel: int, stride: int) -> int:
  return (size + 2 * (kernel // 2) - kernel) // stride + 1  # Padding k // 2, as in the model.


def resnet_cost(m) -> VisionCost:
  """Walks the same layout as `models.resnet.ResNet`: each conv's weights and output pixels."""
  image_size, params, flops = m.image_size, 0, 0

  def conv(size, in_ch, out_ch, kernel, stride):
    nonlocal params, flops
    out = _conv_out(size, kernel, stride)
    params += kernel * kernel * in_ch * out_ch + 2 * out_ch  # Weights; batch-norm scale and bias.
    flops += 2 * out * out * kernel * kernel * in_ch * out_ch
    return out

  stem_kernel, stem_stride = (7, 2) if m.stem == 'imagenet' else (3, 1)
  size = conv(image_size, m.channels, m.width, stem_kernel, stem_stride)
  first_layer_flops = flops
  if m.stem == 'imagenet':
    size = _conv_out(size, 3, 2)  # Max pool.
  kind, blocks_per_stage = resnet.STAGES[m.depth]
  in_ch = m.width
  for stage, num_blocks in enumerate(blocks_per_stage):
    channels = m.width * 2 ** stage
    for i in range(num_blocks):
      stride = 2 if stage > 0 and i == 0 else 1
      if kind == 'basic':
        out_ch = channels
        out = conv(size, in_ch, channels, 3, stride)
        conv(out, channels, channels, 3, 1)
      else:
        out_ch = channels * resnet.BOTTLENECK_EXPANSION
        conv(size, in_ch, channels, 1, 1)
        out = conv(size, channels, channels, 3, stride)
        conv(out, channels, out_ch, 1, 1)
      if stride != 1 or in_ch != out_ch:
        conv(size, in_ch, out_ch, 1, stride)  # Projection shortcut.
      size, in_ch = out, out_ch
  params += in_ch * m.num_classes + m.num_classes
  flops += 2 * in_ch * m.num_classes
  return VisionCost(params, float(flops), float(first_layer_flops))


def mlp_cost(m) -> VisionCost:
  dims = [m.image_size * m.image_size * m.channels, *m.hidden_dims, m.num_classes]
  matmuls = [d_in * d_out for d_in, d_out in zip(dims[:-1], dims[1:])]
  return VisionCost(sum(matmuls) + sum(dims[1:]), 2.0 * sum(matmuls), 2.0 * matmuls[0])


def model_kwargs(config) -> types.SimpleNamespace:
  """Every constructor argument of `config.model`'s model: the config's values over the defaults,
  with sizes the data decides (image_size 0) taken from the dataset config."""
  params = inspect.signature(MODELS.get(config.model.name).__init__).parameters
  kwargs = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
  kwargs.update(config.model)
  if not kwargs.get('image_size', True):
    kwargs['image_size'] = config.dataset.image_size
  if 'num_classes' in kwargs and not kwargs['num_classes']:
    raise ValueError('config.model.num_classes=0 is filled in from the dataset by '
                     'experiment.resolve_config; account for the resolved config, or set it.')
  return types.SimpleNamespace(**kwargs)


def _classifier_accounting(cost_fn):
  def account(config) -> Accounting:
    cost = cost_fn(model_kwargs(config))
    return Accounting(cost.params, cost.params, cost.train_flops, 0, cost.forward_flops)
  return account


# Model registry name -> Accounting of a resolved config (model and dataset keys filled in).
# A new model family registers its own: `@flops.ACCOUNTING.register('name')`.
ACCOUNTING = Registry('parameter/FLOP accounting')
ACCOUNTING.register('transformer')(_transformer_accounting)
ACCOUNTING.register('encoder')(_transformer_accounting)
ACCOUNTING.register('vit')(_classifier_accounting(vit_cost))
ACCOUNTING.register('resnet')(_classifier_accounting(resnet_cost))
ACCOUNTING.register('mlp')(_classifier_accounting(mlp_cost))


def train_flops_per_example(config, size: Accounting | None = None) -> float:
  """Model FLOPs of one trained example as the run trains it: frozen parameters skip their
  weight gradients (and the input gradients below the lowest trained parameter), LoRA adds its
  adapters' matmuls. Exact for the transformer family; other families count every parameter as
  trained (an upper bound for a frozen backbone)."""
  if config.model.name in ('transformer', 'encoder'):
    return transformer_train_flops(config)
  return (size or accounting(config)).train_flops_per_example


def accounting(config) -> Accounting:
  if config.model.name not in ACCOUNTING:
    raise NotImplementedError(f'No parameter/FLOP accounting for model {config.model.name!r}; '
                              'register one with @jaxscale.metrics.flops.ACCOUNTING.register(name).')
  return ACCOUNTING.get(config.model.name)(config)


# Dense peak FLOP/s per chip by the arithmetic its matmul units run, from vendor specifications,
# keyed by the exact `device_kind` JAX reports. Exact names only: variants of one chip differ
# (an H100 PCIe or NVL is not an SXM). Sparsity figures are halved to dense. TPUs publish only
# bf16: their float32 matmuls are bf16 passes (one by default, several at higher precision).
_A100 = {'bfloat16': 312e12, 'tensorfloat32': 156e12, 'float32': 19.5e12}
_H100_SXM = {'bfloat16': 989e12, 'tensorfloat32': 494.5e12, 'float32': 67e12}
_H100_NVL = {'bfloat16': 835e12, 'tensorfloat32': 417.5e12, 'float32': 60e12}
PEAK_FLOPS_BY_DEVICE_KIND = {
    'TPU v4': {'bfloat16': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12},   # v5e
    'TPU v5e': {'bfloat16': 197e12},
    'TPU v5': {'bfloat16': 459e12},        # v5p
    'TPU v5p': {'bfloat16': 459e12},
    'TPU v6 lite': {'bfloat16': 918e12},   # v6e (Trillium)
    'TPU v6e': {'bfloat16': 918e12},
    'NVIDIA A100-SXM4-40GB': _A100,
    'NVIDIA A100-SXM4-80GB': _A100,
    'NVIDIA A100-PCIE-40GB': _A100,
    'NVIDIA A100 80GB PCIe': _A100,
    'NVIDIA H100 80GB HBM3': _H100_SXM,   # SXM
    'NVIDIA H100 PCIe': {'bfloat16': 756e12, 'tensorfloat32': 378e12, 'float32': 51e12},
    'NVIDIA H100 NVL': _H100_NVL,
    'NVIDIA H200': _H100_SXM,             # SXM: the H100's compute, more memory.
    'NVIDIA H200 NVL': _H100_NVL,
}

# jax_default_matmul_precision -> the arithmetic float32 matmuls then run; None: the platform's
# default, which favours speed (TPU: one bf16 pass; recent NVIDIA GPUs: TF32).
_FLOAT32_MATMULS = {'bfloat16': 'bfloat16', 'fastest': 'bfloat16',
                    'tensorfloat32': 'tensorfloat32', 'high': 'tensorfloat32',
                    'float32': 'float32', 'highest': 'float32',
                    'BF16_BF16_F32': 'bfloat16', 'TF32_TF32_F32': 'tensorfloat32',
                    'F32_F32_F32': 'float32'}
_FLOAT32_DEFAULT = {'tpu': 'bfloat16', 'gpu': 'tensorfloat32'}


def matmul_arithmetic(compute_dtype: str, platform: str) -> str:
  """The arithmetic a model computing in `compute_dtype` runs its matmuls in on `platform`: the
  dtype itself, except that float32 follows JAX's matmul precision."""
  if compute_dtype != 'float32':
    return compute_dtype
  precision = jax.config.jax_default_matmul_precision
  if precision in (None, 'default'):
    return _FLOAT32_DEFAULT.get(platform, 'float32')
  return _FLOAT32_MATMULS.get(str(precision), str(precision))


def peak_flops_per_device(compute_dtype: str, device=None) -> tuple[float | None, str]:
  """(peak FLOP/s, where it came from) for one device running matmuls for a `compute_dtype`
  model, from the spec table; (None, why) for a device kind or arithmetic it does not list: MFU
  is then not reported rather than measured against a guess."""
  device = device or jax.devices()[0]
  kind = device.device_kind
  arithmetic = matmul_arithmetic(compute_dtype, device.platform)
  peak = PEAK_FLOPS_BY_DEVICE_KIND.get(kind, {}).get(arithmetic)
  if peak:
    return peak, f'spec:{kind}:{arithmetic}'
  return None, (f'no {arithmetic} peak FLOP/s known for device kind {kind!r} (add it to '
                'jaxscale.metrics.flops.PEAK_FLOPS_BY_DEVICE_KIND)')


def compute_dtype(config) -> str:
  """The dtype a run's matmuls take (config.model.dtype; float32 where a model has none)."""
  return config.model.get('dtype', 'float32')


def compiled_flops(compiled, num_devices: int | None = None) -> float | None:
  """XLA's FLOP count of a compiled step (whole program over its `num_devices`, by default all
  of them: the count is per device for a partitioned program), or None if the backend gives
  none: reported beside the analytic count as `flops_per_step_xla`. It counts what the
  program runs: elementwise work too, a convolution's taps on padding not, rematerialised
  forwards twice, a merged LoRA weight's full gradient."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # noqa: BLE001  (some backends do not implement it)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  devices = jax.device_count() if num_devices is None else num_devices
  return float(flops) * devices if flops and flops > 0 else None
