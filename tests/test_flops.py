"""Parameter and FLOP counts against the model itself and XLA's cost model."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from jaxscale import flops, train
from tests.helpers import tiny_config


@pytest.mark.parametrize('activation', ['swiglu', 'gelu'])
@pytest.mark.parametrize('tied', [True, False])
def test_param_count_matches_the_model(activation, tied):
  config = tiny_config(**{'model.mlp_activation': activation, 'model.tie_embeddings': tied})
  model = train.build_model(config.model, 0)
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  total, non_embedding = flops.count_params(config.model, config.model.vocab_size)
  assert total == actual
  assert total - non_embedding == config.model.vocab_size * 32 * (1 if tied else 2)


@pytest.mark.parametrize('activation', ['swiglu', 'gelu'])
def test_train_flops_match_xla_cost_analysis(activation):
  config = tiny_config(**{'model.d_model': 256, 'model.num_heads': 4, 'model.mlp_dim': 512,
                          'model.vocab_size': 256, 'model.mlp_activation': activation,
                          'dataset.seq_len': 128})
  model = train.build_model(config.model, 0)
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
  model = train.build_model(config.model, 0)
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


def test_peak_flops_table_and_cpu_measurement():
  peak, source = flops.peak_flops_per_device()
  assert peak > 1e8 and source.startswith('measured:cpu')
