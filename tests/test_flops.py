"""Parameter and FLOP counts against the model itself and XLA's cost model."""

import types

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from jaxscale.metrics import flops
from jaxscale.models import build
from jaxscale.train import actions
from tests.helpers import tiny_config


@pytest.mark.parametrize('activation', ['swiglu', 'gelu'])
@pytest.mark.parametrize('tied', [True, False])
def test_param_count_matches_the_model(activation, tied):
  config = tiny_config(**{'model.mlp_activation': activation, 'model.tie_embeddings': tied})
  model = build.build_model(config.model, 0)
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  total, non_embedding = flops.count_params(config.model, config.model.vocab_size)
  assert total == actual
  assert total - non_embedding == config.model.vocab_size * 32 * (1 if tied else 2)


@pytest.mark.parametrize('activation', ['swiglu', 'gelu'])
def test_train_flops_match_xla_cost_analysis(activation):
  config = tiny_config(**{'model.d_model': 256, 'model.num_heads': 4, 'model.mlp_dim': 512,
                          'model.vocab_size': 256, 'model.mlp_activation': activation,
                          'dataset.seq_len': 128})
  model = build.build_model(config.model, 0)
  graphdef, params = nnx.split(model, nnx.Param)
  batch, seq_len = 2, config.dataset.seq_len
  tokens = jnp.zeros((batch, seq_len), jnp.int32)

  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  xla_flops = compiled.cost_analysis()['flops']
  ours = flops.train_flops_per_token(config.model, seq_len, 256) * batch * seq_len
  assert abs(ours - xla_flops) / xla_flops < 0.10, (ours, xla_flops)


@pytest.mark.parametrize('name, num_classes', [('encoder', 0), ('encoder', 10), ('transformer', 10)])
def test_encoder_and_classifier_flops_match_xla_cost_analysis(name, num_classes):
  config = tiny_config(**{'model.name': name, 'model.num_classes': num_classes,
                          'model.d_model': 256, 'model.num_heads': 4, 'model.mlp_dim': 512,
                          'model.vocab_size': 256, 'dataset.seq_len': 128})
  model = build.build_model(config.model, 0)
  graphdef, params = nnx.split(model, nnx.Param)
  batch, seq_len = 2, config.dataset.seq_len
  tokens = jnp.zeros((batch, seq_len), jnp.int32)
  mask = jnp.ones((batch, seq_len), jnp.int32).at[0, 100:].set(0)
  labels = tokens[:, 0] if num_classes else tokens

  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens, mask)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  xla_flops = compiled.cost_analysis()['flops']
  ours = flops.accounting(config).train_flops_per_example * batch
  assert abs(ours - xla_flops) / xla_flops < 0.10, (ours, xla_flops)


def _device(kind, platform='gpu'):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


def test_peak_flops_match_device_kinds_exactly_and_are_unknown_otherwise():
  assert flops.peak_flops_per_device('bfloat16', _device('NVIDIA H100 80GB HBM3')) == (
      989e12, 'spec:NVIDIA H100 80GB HBM3:bfloat16')
  assert flops.peak_flops_per_device('bfloat16', _device('NVIDIA H100 PCIe'))[0] == 756e12
  for kind in ('NVIDIA H100 SXM5 94GB', 'NVIDIA GeForce RTX 4090', 'TPU v7x', 'cpu'):
    peak, why = flops.peak_flops_per_device('bfloat16', _device(kind))
    assert peak is None and repr(kind) in why
  assert flops.peak_flops_per_device('float32')[0] is None  # This CPU: MFU is not reported.


def test_peak_flops_follow_the_compute_dtype_and_matmul_precision():
  h100, tpu = _device('NVIDIA H100 80GB HBM3'), _device('TPU v5p', 'tpu')
  assert flops.peak_flops_per_device('bfloat16', h100)[0] == 989e12
  # float32 matmuls: TF32 tensor cores by default on the GPU, true float32 at 'highest'.
  assert flops.peak_flops_per_device('float32', h100)[0] == 494.5e12
  with jax.default_matmul_precision('highest'):
    assert flops.peak_flops_per_device('float32', h100) == (67e12,
                                                           'spec:NVIDIA H100 80GB HBM3:float32')
    peak, why = flops.peak_flops_per_device('float32', tpu)  # Several bf16 passes: no spec.
    assert peak is None and 'float32' in why
  assert flops.peak_flops_per_device('float32', tpu)[0] == 459e12  # One bf16 pass by default.


def test_an_fp32_runs_mfu_uses_the_fp32_peak(monkeypatch):
  monkeypatch.setattr(jax, 'devices', lambda *a: [_device('NVIDIA A100-SXM4-80GB')])
  size = types.SimpleNamespace(params_total=1, params_non_embedding=1, train_flops_per_example=1)
  mesh = types.SimpleNamespace(shape={'data': 8})
  config = tiny_config()
  assert flops.compute_dtype(config) == 'float32'
  with jax.default_matmul_precision('float32'):
    fp32_peak = actions.peak_flops_total(size, mesh, 8, flops.compute_dtype(config))
  bf16_peak = actions.peak_flops_total(size, mesh, 8, 'bfloat16')
  assert (fp32_peak, bf16_peak) == (8 * 19.5e12, 8 * 312e12)


def test_throughput_reports_no_mfu_without_a_peak():
  known, unknown = (actions.Throughput(8, 0, 1e9, peak) for peak in (1e12, None))
  assert 'mfu' in known.report(step=2) and 'mfu' not in unknown.report(step=2)
