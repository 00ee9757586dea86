"""Parameter and FLOP counts against the model itself and XLA's cost model."""

import types

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax.experimental import roofline

from jaxscale.core import param_paths
from jaxscale.metrics import flops
from jaxscale.models import build, lora
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


def test_forward_terms_match_a_hand_count():
  """d=8, 2 heads of 4, MLP 16, vocabulary 10, L=4 tokens, one layer; per token."""
  config = tiny_config(**{'model.d_model': 8, 'model.num_heads': 2, 'model.mlp_dim': 16,
                          'model.num_layers': 1, 'model.vocab_size': 10})
  swiglu = flops.forward_flops_terms(config.model, 4, 10)
  assert swiglu == {
      'qkv': 3 * 2 * 8 * 8,            # Q, K and V: 8 -> 8 each, 2 FLOPs per multiply-add.
      'attention_logits': 2 * 4 * 8,   # Each query against the 4 keys, over 2 heads x 4 dims.
      'attention_values': 2 * 4 * 8,   # 4 probabilities x 8 value dims.
      'attention_out': 2 * 8 * 8,
      'mlp_in': 2 * 2 * 8 * 16,        # SwiGLU: gate and input projections.
      'mlp_out': 2 * 16 * 8,
      'logits': 2 * 8 * 10}
  assert sum(swiglu.values()) == 1568 == flops.forward_flops_per_token(config.model, 4, 10)
  config.model.mlp_activation = 'gelu'
  assert flops.forward_flops_terms(config.model, 4, 10)['mlp_in'] == 2 * 8 * 16
  # Grouped-query attention: 1 key/value head of 4 dims; the logits still cost per query head.
  config.model.num_kv_heads = 1
  terms = flops.forward_flops_terms(config.model, 4, 10)
  assert terms['qkv'] == 2 * 8 * (8 + 4 + 4) and terms['attention_logits'] == 2 * 4 * 8
  # A classifier: no per-token logits; its head (and mean pooling's sum) once per sequence.
  classifier = tiny_config(**{'model.name': 'encoder', 'model.num_classes': 3,
                              'model.pooling': 'mean', 'model.d_model': 8, 'model.num_heads': 2,
                              'model.mlp_dim': 16, 'model.num_layers': 1,
                              'model.vocab_size': 10, 'dataset.seq_len': 4})
  size = flops.accounting(classifier)
  per_token = 1568 - 2 * 8 * 10
  assert size.forward_flops_per_example == 4 * per_token + 2 * 4 * 8 + 2 * 8 * 3
  # Training: 3x every matmul but the pooling's sum, which has no weight to differentiate.
  assert size.train_flops_per_example == 3 * (4 * per_token + 2 * 8 * 3) + 2 * (2 * 4 * 8)


def _loss_and_trainable(config):
  """(loss of the trainable parameters, those parameters): frozen ones are constants."""
  model = build.build_model(config.model, 0)
  graphdef, params = nnx.split(model, nnx.Param)
  frozen = {name for name in param_paths.named_leaves(params)
            if param_paths.is_frozen(name, config.optimizer)}
  is_frozen = lambda path, _: param_paths.path_name(path) in frozen
  trainable, fixed = params.filter(nnx.Not(is_frozen)), params.filter(is_frozen)
  batch, seq_len = 2, config.dataset.seq_len
  tokens = jnp.zeros((batch, seq_len), jnp.int32)
  mask = jnp.ones((batch, seq_len), jnp.int32).at[0, seq_len // 2:].set(0)
  classes = flops._num_classes(config.model)  # pylint: disable=protected-access
  labels = tokens[:, 0] if classes else tokens

  def loss(p):
    model = nnx.merge(graphdef, nnx.merge_state(fixed, p))
    logits = model(tokens, mask) if config.model.name == 'encoder' or classes else model(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, trainable, batch


LM = {'model.d_model': 64, 'model.num_heads': 2, 'model.mlp_dim': 128, 'model.vocab_size': 96,
      'dataset.seq_len': 64}


@pytest.mark.parametrize('overrides', [
    {}, {'model.mlp_activation': 'gelu', 'model.tie_embeddings': False},
    {'model.name': 'encoder'},
    {'model.num_kv_heads': 1}, {'model.num_kv_heads': 2, 'model.name': 'encoder'},
    {'model.name': 'encoder', 'model.num_classes': 10, 'model.pooling': 'mean'},
    {'model.name': 'transformer', 'model.num_classes': 10},
    # Frozen parameters: no weight gradient, and no input gradient below the lowest trained one.
    {'optimizer.frozen': ('embed_VxD',)},
    {'optimizer.frozen': ('embed_VxD', r'blocks\.0\.')},
    {'optimizer.frozen': (r'blocks\.0\.qkv',)},
    {'model.name': 'encoder', 'model.num_classes': 10, 'optimizer.frozen': ('^(?!head)',)},
], ids=lambda o: ','.join(f'{k.split(".")[-1]}={v}' for k, v in o.items()) or 'base')
def test_train_flops_equal_the_matmuls_jax_traces(overrides):
  """Exactly the train step's matmul FLOPs as jax's roofline counts them (2 per multiply-add,
  over every dot_general the forward and backward trace). Layers unscanned: roofline counts a
  scan's body once."""
  config = tiny_config(**{**LM, **overrides})
  loss, trainable, batch = _loss_and_trainable(config)
  _, traced = roofline.roofline(jax.value_and_grad(loss))(trainable)
  assert batch * flops.train_flops_per_example(config) == traced.flops
  if not overrides.get('optimizer.frozen'):
    assert flops.train_flops_per_example(config) == flops.accounting(config).train_flops_per_example


@pytest.mark.parametrize('overrides', [{}, {'model.mlp_activation': 'gelu'},
                                       {'model.name': 'encoder', 'model.num_classes': 10}])
def test_xla_counts_the_matmuls_plus_elementwise_work(overrides):
  """Stated convention: model FLOPs are matmul FLOPs. XLA's cost analysis counts those (the
  identity above) and elementwise work (norms, softmax, activations, the loss), which it weighs
  at 1x-2x jax's one-FLOP-per-element count of those ops. A long sequence makes attention a large
  share: an analytic count without it falls outside the band."""
  config = tiny_config(**{**LM, 'dataset.seq_len': 256, **overrides})
  loss, trainable, batch = _loss_and_trainable(config)
  grad = jax.value_and_grad(loss)
  _, traced = roofline.roofline(grad)(trainable)
  elementwise = traced.unfused_flops - traced.flops
  xla = jax.jit(grad).lower(trainable).compile().cost_analysis()['flops']
  ours = batch * flops.train_flops_per_example(config)
  assert elementwise <= xla - ours <= 2 * elementwise, (ours, xla, elementwise)
  terms = flops.forward_flops_terms(config.model, 256, config.model.vocab_size)
  attention = batch * 256 * 3 * (terms['attention_logits'] + terms['attention_values'])
  assert not elementwise <= xla - (ours - attention) <= 2 * elementwise


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


@pytest.mark.parametrize('targets,num_kv_heads', [
    (('qkv', 'out_HxKxD'), 0), (('q', 'v', 'mlp_in', 'mlp_out'), 0), (('q', 'k', 'o'), 2)])
def test_lora_train_flops_equal_the_matmuls_of_its_step(targets, num_kv_heads):
  """Hu et al.'s adapters beside frozen weights (the step with dropout): the base forward and
  input gradients, each adapter's x A and (x A) B with their gradients."""
  config = tiny_config(**{**LM, 'lora.rank': 4, 'lora.dropout': 0.1, 'lora.targets': targets,
                          'model.num_kv_heads': num_kv_heads,
                          'optimizer.frozen': (lora.NOT_AN_ADAPTER,)})
  graphdef, params = nnx.split(build.model_for(config), nnx.Param)
  adapters = params.filter(lambda path, _: lora.ADAPTER_NAME.search(param_paths.path_name(path)))
  base = params.filter(lambda path, _: not lora.ADAPTER_NAME.search(param_paths.path_name(path)))
  tokens = jnp.zeros((2, config.dataset.seq_len), jnp.int32)

  def loss(p):
    model = nnx.merge(graphdef, nnx.merge_state(base, p), copy=True)
    model = lora.prepare(model, jax.random.key(0), train=True)
    return optax.softmax_cross_entropy_with_integer_labels(model(tokens), tokens).mean()

  _, traced = roofline.roofline(jax.value_and_grad(loss))(adapters)
  assert 2 * flops.train_flops_per_example(config) == traced.flops
  full = tiny_config(**LM)  # Adapted, the step costs less than training every weight.
  assert flops.train_flops_per_example(config) < flops.train_flops_per_example(full)


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
