"""Exact parameter counts, training FLOPs, and model FLOP utilisation (MFU).

FLOPs count multiply-adds as 2 and include every matmul of the transformer: projections, the
logits, and attention's QK^T and AV over the full L x L score matrix (XLA computes the masked
half too, so this is what the hardware does). A training step costs 3x the forward pass
(backward = 2x forward). Elementwise work (norms, softmax, optimizer) is left out; it is a few
percent at realistic widths, and `tests/test_flops.py` checks the total against XLA's cost model.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp


def _block_matmul_params(model_config) -> int:
  d, f = model_config.d_model, model_config.mlp_dim
  mlp_matrices = 3 if model_config.mlp_activation == 'swiglu' else 2
  return 4 * d * d + mlp_matrices * d * f  # QKV + output projection, then the MLP.


def count_params(model_config, vocab_size: int) -> tuple[int, int]:
  """(total, non_embedding) parameter counts of the transformer.

  Non-embedding excludes the token embedding and, when untied, the unembedding matrix
  (Kaplan et al. 2020's N); norms and all block weights are included.
  """
  d = model_config.d_model
  embedding = vocab_size * d * (1 if model_config.tie_embeddings else 2)
  norms = (2 * model_config.num_layers + 1) * d
  non_embedding = model_config.num_layers * _block_matmul_params(model_config) + norms
  return embedding + non_embedding, non_embedding


def forward_flops_per_token(model_config, seq_len: int, vocab_size: int) -> float:
  d, layers = model_config.d_model, model_config.num_layers
  projections = 2 * layers * _block_matmul_params(model_config)
  attention = layers * 2 * (2 * seq_len * d)  # QK^T and AV, each 2*L*D per token.
  logits = 2 * d * vocab_size
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


def _transformer_accounting(config) -> Accounting:
  model, seq_len = config.model, config.dataset.seq_len
  total, non_embedding = count_params(model, model.vocab_size)
  per_token = train_flops_per_token(model, seq_len, model.vocab_size)
  return Accounting(total, non_embedding, seq_len * per_token, seq_len)


# Model registry name -> Accounting of a resolved config (model and dataset keys filled in).
_ACCOUNTING = {'transformer': _transformer_accounting}


def accounting(config) -> Accounting:
  if config.model.name not in _ACCOUNTING:
    raise NotImplementedError(f'No parameter/FLOP accounting for model {config.model.name!r}; '
                              'add it to jaxscale.flops._ACCOUNTING.')
  return _ACCOUNTING[config.model.name](config)


# Dense bf16 peak FLOP/s per chip, from vendor specifications.
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
    'NVIDIA H100 80GB HBM3': 989e12,
    'NVIDIA H100': 989e12,
    'NVIDIA H200': 989e12,
}


@functools.cache
def measured_matmul_peak(size: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a large square matmul on device 0: the practical peak where no table entry exists."""
  x = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def peak_flops_per_device(device=None) -> tuple[float, str]:
  """(peak FLOP/s, where it came from) for one device: the spec table, else a measured matmul."""
  device = device or jax.devices()[0]
  kind = device.device_kind
  for name, peak in PEAK_FLOPS_BY_DEVICE_KIND.items():
    if kind == name or kind.startswith(name + ' '):
      return peak, f'spec:{name}'
  if device.platform == 'cpu':
    # Forced host devices share the same cores, so the whole host's matmul peak is split among them.
    return measured_matmul_peak() / jax.local_device_count(), 'measured:cpu_fp32_matmul'
  return measured_matmul_peak(dtype=jnp.bfloat16), f'measured:{kind}_bf16_matmul'
