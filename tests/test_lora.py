"""LoRA: only adapters train, their checkpoints are small and resume on top of the base, merging
is exact, and scanned stacks get one stacked adapter per weight."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxscale.core import param_paths
from jaxscale.metrics import writers
from jaxscale.models import build, lora
from jaxscale.train import experiment, loop, steps
from tests.helpers import markov_config, straight_and_resumed, tiny_config


@pytest.fixture(scope='module')
def base_run(tiny_lm_run):
  """A pretrained tiny LM to adapt."""
  return tiny_lm_run[0]


def _lora_config(data_dir, base_run, **overrides):
  return markov_config(data_dir, **{
      'init_from.workdir': str(base_run), 'lora.rank': 2, 'lora.alpha': 4.0,
      'lora.targets': ('qkv', 'out_HxKxD', 'mlp_out'), 'optimizer.learning_rate': 1e-2,
      'num_train_steps': 8, 'checkpoint_every_steps': 4, 'eval_every_steps': 8, **overrides})


def _named_host(params) -> dict[str, np.ndarray]:
  return {name: np.asarray(leaf[...]) for name, leaf in param_paths.named_leaves(params).items()}


def test_adapter_delta_is_the_scaled_low_rank_product():
  weight = nnx.Param(jnp.zeros((3, 4, 5)), out_sharding=('heads', 'kv', 'embed'),
                     eager_sharding=False)
  adapter = lora.Adapter(weight, rank=2, alpha=6.0, dropout=0.0, rngs=nnx.Rngs(0))
  adapter.b[...] = jax.random.normal(jax.random.key(1), adapter.b.shape)
  a, b = np.asarray(adapter.a[...]), np.asarray(adapter.b[...])
  assert a.shape == (12, 2) and b.shape == (2, 5)  # Inputs (heads, kv) -> output embed.
  expected = (a @ b * 3.0).reshape(3, 4, 5)
  np.testing.assert_allclose(np.asarray(adapter.delta()), expected, rtol=1e-6)


def test_a_scanned_stack_initialises_a_with_the_scale_of_a_single_layer():
  axes = ('embed', None, 'heads', 'kv')
  single = nnx.Param(jnp.zeros((64, 3, 4, 16)), out_sharding=axes, eager_sharding=False)
  stacked = nnx.Param(jnp.zeros((4, 64, 3, 4, 16)), out_sharding=('layers', *axes),
                      eager_sharding=False)
  he_std = np.sqrt(2 / 64)  # He over the input features only: d_model = 64.
  for weight in (single, stacked):
    a = np.asarray(lora.Adapter(weight, rank=16, alpha=1.0, dropout=0.0, rngs=nnx.Rngs(0)).a[...])
    assert a.std() == pytest.approx(he_std, rel=0.05), weight.shape


def test_each_projection_of_a_fused_weight_gets_its_own_rank_r_update():
  weight = nnx.Param(jnp.zeros((16, 3, 2, 4)), out_sharding=('embed', None, 'heads', 'kv'),
                     eager_sharding=False)
  adapter = lora.Adapter(weight, rank=2, alpha=2.0, dropout=0.0, rngs=nnx.Rngs(0))
  adapter.b[...] = jax.random.normal(jax.random.key(1), adapter.b.shape)
  delta = np.asarray(adapter.delta())
  assert adapter.a.shape == (3, 16, 2) and delta.shape == (16, 3, 2, 4)
  # Q, K and V: three independent rank-2 updates, not one shared one.
  assert np.linalg.matrix_rank(delta.reshape(16, 24)) == 6
  for slot in range(3):
    np.testing.assert_allclose(delta[:, slot].reshape(16, 8),
                               np.asarray(adapter.a[slot] @ adapter.b[slot]), rtol=1e-5)
  # Only Q and V adapted: K's slot stays exactly the base weight's.
  adapter = lora.Adapter(weight, rank=2, alpha=2.0, dropout=0.0, rngs=nnx.Rngs(0), slots=(0, 2))
  adapter.b[...] = jax.random.normal(jax.random.key(1), adapter.b.shape)
  assert adapter.a.shape == (2, 16, 2)
  delta = np.asarray(adapter.delta())
  assert not delta[:, 1].any() and delta[:, 0].any() and delta[:, 2].any()


def test_targets_name_the_projections():
  config = tiny_config(**{'lora.rank': 2, 'lora.targets': ('q', 'v', 'o', 'mlp_out')})
  model = build.model_for(config)
  adapted = {path[-1] for path, node in nnx.iter_graph(model) if isinstance(node, lora.Adapter)}
  assert adapted == {'qkv_DxTxHxK_lora', 'out_HxKxD_lora', 'mlp_out_FxD_lora'}
  adapter = model.blocks[0].qkv_DxTxHxK_lora
  assert adapter.slots == (0, 2) and adapter.a.shape[0] == 2
  # The old names still work: a regex adapts every projection of the weight it matches.
  model = build.model_for(tiny_config(**{'lora.rank': 2, 'lora.targets': ('qkv',)}))
  assert model.blocks[0].qkv_DxTxHxK_lora.slots == (0, 1, 2)


def test_only_adapters_train_and_the_checkpoint_holds_just_them(
    data_dir, base_run, tmp_path):
  config = _lora_config(data_dir, base_run)
  built = experiment.build(config, str(tmp_path))
  before = _named_host(built.state.params)
  adapters = [n for n in before if lora.ADAPTER_NAME.search(n)]
  assert adapters and all(n.split('_lora.')[0] in before for n in adapters)
  assert built.param_counts['params_trainable'] == sum(before[n].size for n in adapters)
  summary = loop.train_loop(built)
  assert summary['finished']

  saved = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / '8' / 'state')
  saved_names = set(param_paths.named_leaves(saved['params']))
  assert saved_names == set(adapters)  # The frozen base is not in the run's checkpoints.

  source = _named_host(experiment.build(config, str(tmp_path)).state.params)  # Resumes at 8.
  for name, value in before.items():
    if name in adapters:
      continue
    np.testing.assert_array_equal(source[name], value)  # The base is bit-identical.
  assert any(not np.array_equal(source[n], before[n]) for n in adapters if n.endswith('.b'))


def test_a_resumed_lora_run_equals_an_uninterrupted_one(data_dir, base_run, tmp_path, monkeypatch):
  config = _lora_config(data_dir, base_run)
  straight, resumed = straight_and_resumed(config, tmp_path, monkeypatch, interrupt_after=4)
  assert resumed['eval_loss'] == straight['eval_loss']
  rows = {name: [r['train_loss'] for r in writers.read_jsonl(tmp_path / name / 'metrics.jsonl')
                 if 'train_loss' in r and 'eval_loss' not in r and r['step'] > 4]
          for name in ('straight', 'resumed')}
  assert rows['straight'] and rows['straight'] == rows['resumed']


def test_merged_weights_give_the_logits_of_the_adapted_model(data_dir, base_run, tmp_path):
  config = _lora_config(data_dir, base_run, num_train_steps=4, eval_every_steps=4)
  built = experiment.build(config, str(tmp_path))
  summary = loop.train_loop(built)
  state = experiment.build(config, str(tmp_path)).state  # The trained adapters, resumed.
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, built.config.model.vocab_size)
  batch = {'inputs': tokens, 'targets': tokens, 'weights': jnp.ones((2, 16))}

  def logits_of(model, batch, *, train, rng):
    return {'logits': model(batch['inputs']), 'loss_sum': 0.0, 'weight_sum': 1.0}

  adapted, _ = steps.loss_sums(built.graphdef, state.params, state.model_state, batch,
                               objective=logits_of, train=False)
  model = nnx.merge(built.graphdef, state.params, state.model_state)
  assert lora.has_adapters(model)
  merged = lora.merge(model)
  assert not lora.has_adapters(merged)
  graphdef, params = nnx.split(merged)  # What an export would hold: plain weights.
  exported = nnx.merge(graphdef, params)(tokens)
  np.testing.assert_allclose(np.asarray(exported), np.asarray(adapted['logits']), atol=1e-5)
  base_only = build.build_model(built.config.model, built.config.seed)
  assert summary['finished'] and not np.allclose(np.asarray(base_only(tokens)),
                                                 np.asarray(exported), atol=1e-3)


def test_scanned_layers_get_one_stacked_adapter_per_weight(data_dir, tmp_path):
  config = markov_config(data_dir, **{'model.scan_layers': True, 'lora.rank': 2,
                                      'num_train_steps': 4, 'eval_every_steps': 4,
                                      'checkpoint_every_steps': 4})
  built = experiment.build(config, str(tmp_path))
  names = _named_host(built.state.params)
  adapters = {n: v for n, v in names.items() if lora.ADAPTER_NAME.search(n)}
  num_layers = config.model.num_layers
  assert sorted(adapters) == ['blocks.out_HxKxD_lora.a', 'blocks.out_HxKxD_lora.b',
                              'blocks.qkv_DxTxHxK_lora.a', 'blocks.qkv_DxTxHxK_lora.b']
  assert all(v.shape[0] == num_layers for v in adapters.values())
  assert adapters['blocks.qkv_DxTxHxK_lora.a'].shape == (num_layers, 3, config.model.d_model, 2)
  summary = loop.train_loop(built)
  assert summary['finished'] and np.isfinite(summary['eval_loss'])
  after = _named_host(experiment.build(config, str(tmp_path)).state.params)
  assert not np.array_equal(after['blocks.qkv_DxTxHxK_lora.b'], adapters['blocks.qkv_DxTxHxK_lora.b'])
  np.testing.assert_array_equal(after['blocks.qkv_DxTxHxK'], names['blocks.qkv_DxTxHxK'])


def _adapted_forward(scan_layers: bool, dropout: float):
  """forward(train, rng) of a tiny adapted LM on 4 identical rows, its adapters' B nonzero."""
  config = tiny_config(**{'lora.rank': 2, 'lora.dropout': dropout, 'model.scan_layers': scan_layers,
                          'lora.targets': ('q', 'v', 'o', 'mlp_in', 'mlp_out')})
  model = build.model_for(config)
  for index, (_, node) in enumerate(n for n in nnx.iter_graph(model)
                                    if isinstance(n[1], lora.Adapter)):
    node.b[...] = 0.3 * jax.random.normal(jax.random.key(index), node.b.shape)
  graphdef, state = nnx.split(model)
  tokens = jnp.tile(jnp.arange(16)[None], (4, 1))

  def forward(train, rng=None):
    model = nnx.merge(graphdef, state, copy=True)
    return lora.prepare(model, rng, train)(tokens)
  return forward


@pytest.mark.parametrize('scan_layers', [False, True])
def test_dropout_masks_the_adapter_input_per_example_in_training_only(scan_layers):
  forward = _adapted_forward(scan_layers, dropout=0.5)
  train = np.asarray(jax.jit(lambda rng: forward(True, rng))(jax.random.key(0)))
  again = np.asarray(jax.jit(lambda rng: forward(True, rng))(jax.random.key(0)))
  evaluated = np.asarray(forward(False))
  np.testing.assert_array_equal(train, again)  # One key, one mask.
  assert not np.allclose(train[0], train[1], atol=1e-3)  # Identical rows, their own masks.
  np.testing.assert_array_equal(evaluated[0], evaluated[1])  # Eval: no dropout,
  assert not np.allclose(train, evaluated, atol=1e-3)
  merged = _adapted_forward(scan_layers, dropout=0.0)
  np.testing.assert_array_equal(evaluated, np.asarray(merged(False)))  # the merged weights.
  # Keeping (almost) every input, the adapters beside their weights give the merged function.
  kept = _adapted_forward(scan_layers, dropout=1e-9)
  np.testing.assert_allclose(np.asarray(kept(True, jax.random.key(0))), evaluated, atol=2e-5,
                             rtol=1e-5)


def test_without_dropout_training_runs_the_merged_weights():
  def lora_weights(dropout):
    model = build.model_for(tiny_config(**{'lora.rank': 2, 'lora.dropout': dropout}))
    lora.prepare(model, jax.random.key(0), train=True)
    return sum(isinstance(node[...], lora.LoraWeight) for _, node in nnx.iter_graph(model)
               if isinstance(node, nnx.Param))
  assert lora_weights(0.0) == 0 and lora_weights(0.1) == 4  # Both layers' qkv and out_HxKxD.
  forward = _adapted_forward(False, dropout=0.0)
  np.testing.assert_array_equal(np.asarray(forward(True, jax.random.key(0))),
                                np.asarray(forward(False)))
