"""Exact parameter counts, training FLOPs, and model FLOP utilisation (MFU).

FLOPs count multiply-adds as 2 and include every matmul of the transformer: projections, the
logits, and attention's QK^T and AV over the full L x L score matrix (XLA computes the masked
half too, so this is what the hardware does; causal and bidirectional attention cost the same).
A transformer classifier (`num_classes` > 0) has no per-token logits: its head runs once per
sequence, on the pooled position. A training step costs 3x the forward pass
(backward = 2x forward). Elementwise work (norms, softmax, optimizer) is left out; it is a few
percent at realistic widths, and `tests/test_flops.py` checks the total against XLA's cost model.

Vision models count every convolution and matmul the same way (a conv is 2 * output pixels *
kernel area * input channels * output channels). Their first layer reads the pixels, whose
gradient nobody asks for, so its backward is the weight gradient only: training costs 3x the
forward pass minus one forward of that layer. (An MLP's first layer can hold most of its FLOPs,
so "3x the forward" would overstate its cost by up to a third.) Convolutions count every kernel
tap, zero padding included, as published FLOP counts do and the hardware computes; XLA's cost model
skips taps that fall on padding, so it reads lower on small feature maps.
"""

import dataclasses
import inspect
import types

import jax

from jaxscale.core.registry import Registry
from jaxscale.models import MODELS, resnet


def _num_classes(model_config) -> int:
  """Classes of a transformer's classification head; 0 (or None, unresolved text) for an LM."""
  return getattr(model_config, 'num_classes', 0) or 0


def _block_matmul_params(model_config) -> int:
  d, f = model_config.d_model, model_config.mlp_dim
  mlp_matrices = 3 if model_config.mlp_activation == 'swiglu' else 2
  # Grouped-query attention: K and V project to num_kv_heads heads of d / num_heads each.
  num_heads = model_config.num_heads
  kv_width = d * (getattr(model_config, 'num_kv_heads', 0) or num_heads) // num_heads
  return 2 * d * d + 2 * d * kv_width + mlp_matrices * d * f  # Q, K, V, output; then the MLP.


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


def forward_flops_per_token(model_config, seq_len: int, vocab_size: int) -> float:
  d, layers = model_config.d_model, model_config.num_layers
  projections = 2 * layers * _block_matmul_params(model_config)
  attention = layers * 2 * (2 * seq_len * d)  # QK^T and AV, each 2*L*D per token.
  logits = 0 if _num_classes(model_config) else 2 * d * vocab_size  # A head is per sequence.
  return float(projections + attention + logits)


def train_flops_per_token(model_config, seq_len: int, vocab_size: int) -> float:
  """Forward + backward FLOPs per trained token."""
  return 3.0 * forward_flops_per_token(model_config, seq_len, vocab_size)


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
  head = 2 * model.d_model * _num_classes(model)  # Once per sequence.
  forward = seq_len * forward_flops_per_token(model, seq_len, model.vocab_size) + head
  return Accounting(total, non_embedding, seq_len * per_token + 3.0 * head, seq_len, float(forward))


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


def accounting(config) -> Accounting:
  if config.model.name not in ACCOUNTING:
    raise NotImplementedError(f'No parameter/FLOP accounting for model {config.model.name!r}; '
                              'register one with @jaxscale.metrics.flops.ACCOUNTING.register(name).')
  return ACCOUNTING.get(config.model.name)(config)


# Dense bf16 peak FLOP/s per chip, from vendor specifications, keyed by the exact `device_kind`
# JAX reports. Exact names only: variants of one chip differ (an H100 PCIe or NVL is not an SXM).
PEAK_FLOPS_BY_DEVICE_KIND = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,   # v5e
    'TPU v5e': 197e12,
    'TPU v5': 459e12,        # v5p
    'TPU v5p': 459e12,
    'TPU v6 lite': 918e12,   # v6e (Trillium)
    'TPU v6e': 918e12,
    'NVIDIA A100-SXM4-40GB': 312e12,
    'NVIDIA A100-SXM4-80GB': 312e12,
    'NVIDIA A100-PCIE-40GB': 312e12,
    'NVIDIA A100 80GB PCIe': 312e12,
    'NVIDIA H100 80GB HBM3': 989e12,   # SXM
    'NVIDIA H100 PCIe': 756e12,
    'NVIDIA H100 NVL': 835e12,
    'NVIDIA H200': 989e12,             # SXM
    'NVIDIA H200 NVL': 835e12,
}


def peak_flops_per_device(device=None) -> tuple[float | None, str]:
  """(peak FLOP/s, where it came from) for one device from the spec table, or (None, why) for a
  device kind it does not list: MFU is then not reported rather than measured against a guess."""
  device = device or jax.devices()[0]
  kind = device.device_kind
  if kind in PEAK_FLOPS_BY_DEVICE_KIND:
    return PEAK_FLOPS_BY_DEVICE_KIND[kind], f'spec:{kind}'
  return None, (f'no peak FLOP/s known for device kind {kind!r} (add it to '
                'jaxscale.metrics.flops.PEAK_FLOPS_BY_DEVICE_KIND)')


def compiled_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled step (whole program, all devices), or None if the backend
  gives none. Used where the analytic count does not apply, e.g. frozen parameters, whose weight
  gradients XLA never computes."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # noqa: BLE001  (some backends do not implement it)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  return float(flops) * jax.device_count() if flops and flops > 0 else None
