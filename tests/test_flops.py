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


def test_peak_flops_match_device_kinds_exactly_and_are_unknown_otherwise():
  device = lambda kind: types.SimpleNamespace(device_kind=kind, platform='gpu')
  assert flops.peak_flops_per_device(device('NVIDIA H100 80GB HBM3')) == (989e12,
                                                                          'spec:NVIDIA H100 80GB HBM3')
  assert flops.peak_flops_per_device(device('NVIDIA H100 PCIe'))[0] == 756e12  # Not the SXM's.
  for kind in ('NVIDIA H100 SXM5 94GB', 'NVIDIA GeForce RTX 4090', 'TPU v7x', 'cpu'):
    peak, why = flops.peak_flops_per_device(device(kind))
    assert peak is None and repr(kind) in why
  assert flops.peak_flops_per_device()[0] is None  # This CPU: MFU is not reported.


def test_throughput_reports_no_mfu_without_a_peak():
  known, unknown = (actions.Throughput(8, 0, 1e9, peak) for peak in (1e12, None))
  assert 'mfu' in known.report(step=2) and 'mfu' not in unknown.report(step=2)


@pytest.mark.parametrize('num_kv_heads', [1, 2])
def test_grouped_query_attention_counts_the_smaller_keys_and_values(num_kv_heads):
  config = tiny_config(**{'model.num_kv_heads': num_kv_heads, 'model.tie_embeddings': False})
  model = build.build_model(config.model, 0)
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  total, _ = flops.count_params(config.model, config.model.vocab_size)
  full, _ = flops.count_params(tiny_config(**{'model.tie_embeddings': False}).model, 64)
  assert total == actual
  # K and V each shrink from d x d to d x (num_kv_heads * head_dim), in both layers.
  assert full - total == 2 * 2 * 32 * (32 - num_kv_heads * 8)
