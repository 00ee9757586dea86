"""Transfer learning end to end: init_from partial restores, frozen parameters and LR groups,
the masked-LM objective, and a pretrain -> finetune chain through the CLI."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from jaxscale import objectives
from jaxscale.checkpoint import init_from
from jaxscale.config import workdir as workdir_lib
from jaxscale.core import param_paths, sharding
from jaxscale.inference import sampling
from jaxscale.metrics import writers
from jaxscale.models import build
from jaxscale.objectives import mlm_masking
from jaxscale.train import experiment, loop, optim, steps
from tests.helpers import load_config_file, short_markov_config, tiny_config

REPO = pathlib.Path(__file__).parent.parent
REINIT_BLOCK = (r'^blocks\.1\.',)


def _host(params) -> dict[str, np.ndarray]:
  return {name: np.asarray(leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf)
          for name, leaf in param_paths.named_leaves(params).items()}


def _checkpoint_params(workdir) -> dict[str, np.ndarray]:
  model, _ = sampling.restore_model(workdir)
  return _host(nnx.state(model, nnx.Param))


def _fresh_state(config):
  """The initial train state a run of `config` starts from without init_from or a checkpoint."""
  optimizer, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
  return experiment.create_train_state(config, sharding.make_mesh(config.mesh), optimizer)[1]


def _fresh_params(config) -> dict[str, np.ndarray]:
  return _host(_fresh_state(config).params)


@pytest.fixture(scope='module')
def source(tiny_lm_run):
  """(workdir, summary) of a trained tiny LM: the run the others start from."""
  return tiny_lm_run


@pytest.fixture(scope='module')
def transferred(data_dir, source, tmp_path_factory):
  """An experiment built from `source` with block 1 reinitialised (nothing trained)."""
  workdir = tmp_path_factory.mktemp('transferred')
  config = short_markov_config(data_dir, **{'init_from.workdir': str(source[0]),
                                            'init_from.reinit': REINIT_BLOCK})
  return experiment.build(config, str(workdir))


# ---------------------------------------------------------------- init_from


def test_partial_restore_puts_the_source_values_in_and_accounts_for_every_parameter(
    source, transferred):
  source_params = _checkpoint_params(source[0])
  new_params = _host(transferred.state.params)
  report = json.loads((transferred.workdir / init_from.REPORT_FILE).read_text())
  assert report['step'] == 10 and report['source'] == str(source[0])
  listed = report['loaded'] + report['reinitialised'] + report['new']
  assert sorted(listed) == sorted(new_params)  # Every parameter, exactly once.
  assert report['new'] == [] and report['unused'] == [] and report['shape_mismatches'] == {}
  assert 'embed_VxD' in report['loaded'] and 'blocks.0.qkv_DxTxHxK' in report['loaded']
  for name in report['loaded']:
    np.testing.assert_array_equal(new_params[name], source_params[name], err_msg=name)
  # Loaded straight into the new run's shardings.
  for array, expected in zip(jax.tree.leaves(transferred.state.params),
                             jax.tree.leaves(transferred.state_shardings.params), strict=True):
    assert array.sharding == expected


def test_reinitialised_parameters_are_a_fresh_init_not_the_source(source, transferred):
  source_params = _checkpoint_params(source[0])
  fresh = _fresh_params(transferred.config)
  new_params = _host(transferred.state.params)
  report = json.loads((transferred.workdir / init_from.REPORT_FILE).read_text())
  assert sorted(report['reinitialised']) == sorted(
      name for name in new_params if name.startswith('blocks.1.'))
  for name in report['reinitialised']:
    np.testing.assert_array_equal(new_params[name], fresh[name], err_msg=name)
    if name.endswith(('_DxTxHxK', '_HxKxD', '_DxTxF', '_FxD')):  # (Norm scales start at 1.)
      assert not np.array_equal(new_params[name], source_params[name]), name


def test_a_shape_mismatch_raises_naming_the_parameter_and_both_shapes_and_writes_nothing(
    data_dir, source, tmp_path):
  config = short_markov_config(data_dir, **{'model.vocab_size': 48,
                                            'init_from.workdir': str(source[0])})
  with pytest.raises(init_from.InitFromError, match=r'embed_VxD: shape \(32, 32\) in the source, '
                     r'\(48, 32\) in this model'):
    experiment.build(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'config.json').exists()
  assert not (tmp_path / 'run' / init_from.REPORT_FILE).exists()


def test_missing_init_accepts_a_shape_mismatch_and_reports_it(source):
  config = tiny_config(**{'model.vocab_size': 48, 'init_from.workdir': str(source[0]),
                          'init_from.missing': 'init'})
  fresh = nnx.state(build.build_model(config.model, config.seed), nnx.Param)
  params, report = init_from.restore_params(config.init_from, fresh)
  assert report.new == ['embed_VxD']
  assert report.shape_mismatches == {'embed_VxD': {'source': [32, 32], 'new': [48, 32]}}
  assert 'embed_VxD' not in report.loaded and len(report.loaded) == len(_host(fresh)) - 1
  np.testing.assert_array_equal(_host(params)['embed_VxD'], _host(fresh)['embed_VxD'])
  source_params = _checkpoint_params(source[0])
  np.testing.assert_array_equal(_host(params)['blocks.1.qkv_DxTxHxK'],
                                source_params['blocks.1.qkv_DxTxHxK'])


def test_a_head_the_source_lacks_raises_naming_it_unless_reinitialised(source):
  config = tiny_config(**{'model.vocab_size': 32, 'model.num_classes': 4,
                          'init_from.workdir': str(source[0])})
  fresh = nnx.state(build.build_model(config.model, config.seed), nnx.Param)
  with pytest.raises(init_from.InitFromError,
                     match=r'2 parameter\(s\).*\n  head_DxK: not in the source checkpoint'):
    init_from.restore_params(config.init_from, fresh)
  config.init_from.reinit = ('^head',)
  _, report = init_from.restore_params(config.init_from, fresh)
  assert sorted(report.reinitialised) == ['head_DxK', 'head_bias_K'] and report.new == []


def test_resume_wins_over_init_from(data_dir, source, tmp_path):
  config = short_markov_config(data_dir, **{'init_from.workdir': str(source[0])})
  loop.run(config, str(tmp_path))
  report_file = tmp_path / init_from.REPORT_FILE
  report_text, report_mtime = report_file.read_text(), report_file.stat().st_mtime_ns
  own = _checkpoint_params(tmp_path)

  resumed = experiment.build(config, str(tmp_path))
  assert resumed.resumed and int(resumed.state.step) == 10
  params = _host(resumed.state.params)
  source_params = _checkpoint_params(source[0])
  for name, value in params.items():
    np.testing.assert_array_equal(value, own[name], err_msg=name)
  assert not np.array_equal(params['embed_VxD'], source_params['embed_VxD'])
  assert report_file.read_text() == report_text
  assert report_file.stat().st_mtime_ns == report_mtime


# ---------------------------------------------------------------- parameter groups


FROZEN = (r'^embed', r'^blocks\.0\.')


def test_frozen_parameters_stay_bit_identical_and_hold_no_optimizer_moments(
    data_dir, source, tmp_path):
  config = short_markov_config(data_dir, **{'optimizer.frozen': FROZEN})
  summary = loop.run(config, str(tmp_path))
  state = _fresh_state(workdir_lib.read_config(tmp_path))  # Resolved: the vocabulary filled in.
  initial, final = _host(state.params), _checkpoint_params(tmp_path)
  frozen = [n for n in initial if param_paths.matches(n, FROZEN)]
  trainable = [n for n in initial if n not in frozen]
  assert 'embed_VxD' in frozen and 'blocks.0.qkv_DxTxHxK' in frozen
  assert 'blocks.1.qkv_DxTxHxK' in trainable and 'final_norm.scale' in trainable
  for name in frozen:
    np.testing.assert_array_equal(final[name], initial[name], err_msg=name)
  for name in trainable:
    assert not np.array_equal(final[name], initial[name]), name

  # Adam's moments exist for the trainable parameters only.
  adam_states = [s for s in jax.tree.leaves(
      state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
      if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam_states) == 1
  trainable_size = sum(initial[n].size for n in trainable)
  for moments in (adam_states[0].mu, adam_states[0].nu):
    leaves = jax.tree.leaves(moments)
    assert len(leaves) == len(trainable)
    assert sum(leaf.size for leaf in leaves) == trainable_size
  assert not [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.size == initial[
      'embed_VxD'].size and leaf.shape == initial['embed_VxD'].shape]

  first_row = writers.read_jsonl(tmp_path / 'metrics.jsonl')[0]
  for row in (first_row, summary):
    assert row['params_trainable'] == trainable_size
    assert row['params_trainable'] + row['params_frozen'] == row['params_total']
  assert source[1]['params_frozen'] == 0
  assert source[1]['params_trainable'] == source[1]['params_total']
  # No weight gradients for the frozen backbone: fewer FLOPs per example than the full run.
  assert summary['flops_per_example'] < source[1]['flops_per_example']


def _factor_tree(config):
  params = nnx.state(build.build_model(config.model, 0), nnx.Param)
  return params, _host(optim.update_factors(params, config.optimizer))


@pytest.mark.parametrize('scan_layers', [False, True])
def test_layer_decay_and_lr_multipliers_give_each_depth_its_factor(scan_layers):
  decay, num_layers = 0.5, 3
  config = tiny_config(**{'model.num_layers': num_layers, 'model.scan_layers': scan_layers,
                          'model.tie_embeddings': False, 'optimizer.layer_decay': decay,
                          'optimizer.lr_multipliers': ((r'mlp_out', 10.0), (r'^final', 3.0))})
  params, factors = _factor_tree(config)
  assert set(factors) == set(_host(params))
  assert factors['unembed_DxV'] == 1.0  # The LM head: the full rate.
  assert factors['final_norm.scale'] == 3.0
  assert factors['embed_VxD'] == decay ** (num_layers + 1)
  for i in range(num_layers):
    expected = decay ** (num_layers - i)
    if scan_layers:
      qkv, mlp_out = factors['blocks.qkv_DxTxHxK'], factors['blocks.mlp_out_FxD']
      assert qkv.shape == (num_layers, 1, 1, 1, 1) and mlp_out.shape == (num_layers, 1, 1)
      assert qkv[i].item() == pytest.approx(expected)
      assert mlp_out[i].item() == pytest.approx(10.0 * expected)
    else:
      assert factors[f'blocks.{i}.qkv_DxTxHxK'] == pytest.approx(expected)
      assert factors[f'blocks.{i}.attn_norm.scale'] == pytest.approx(expected)
      assert factors[f'blocks.{i}.mlp_out_FxD'] == pytest.approx(10.0 * expected)


def test_below_the_stack_means_embeddings_patches_positions_and_cls_token():
  model_config = ml_collections.ConfigDict(dict(
      name='vit', num_classes=10, image_size=16, patch_size=8, width=16, depth=2, num_heads=2,
      mlp_dim=32, pooling='cls'))
  params = nnx.state(build.build_model(model_config, 0), nnx.Param)
  factors = _host(optim.update_factors(params, ml_collections.ConfigDict({'layer_decay': 0.5})))
  for name in ('patch_PxPxCxD', 'patch_bias_D', 'pos_LxD', 'cls_D'):
    assert factors[name] == 0.125, name
  for name in ('head_DxK', 'head_bias_K', 'final_norm.scale', 'final_norm.bias'):
    assert factors[name] == 1.0, name
  assert factors['blocks.0.qkv_DxTxHxK'] == 0.25 and factors['blocks.1.out_bias_D'] == 0.5


@pytest.mark.parametrize('scan_layers', [False, True])
def test_one_sgd_update_moves_each_parameter_by_its_factor(scan_layers):
  config = tiny_config(**{
      'model.scan_layers': scan_layers, 'optimizer.name': 'sgd', 'optimizer.momentum': 0.0,
      'optimizer.weight_decay': 0.0, 'optimizer.grad_clip_norm': 0.0,
      'optimizer.schedule': 'constant', 'optimizer.warmup_steps': 0,
      'optimizer.learning_rate': 0.1, 'optimizer.layer_decay': 0.5,
      'optimizer.lr_multipliers': ((r'^final_norm', 4.0),)})
  params, factors = _factor_tree(config)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  for name, update in _host(updates).items():
    # Plain SGD moves by -lr * grad; the groups scale that by their factor, element by element.
    expected = np.broadcast_to(-0.1 * np.asarray(factors[name], np.float32), update.shape)
    np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=name)


# ---------------------------------------------------------------- masked LM


def _bert_config(name, data_dir, **overrides):
  """configs/<name>.py shrunk to a 2-layer, d_model 32 encoder on 32-token sequences."""
  return load_config_file(name, **{
      'num_train_steps': 20, 'batch_size': 8, 'log_every_steps': 10, 'eval_every_steps': 10,
      'checkpoint_every_steps': 20, 'num_eval_batches': 2, 'dataset.seq_len': 32,
      'dataset.data_dir': str(data_dir), 'dataset.shuffle_buffer_size': 64,
      'model.num_layers': 2, 'model.d_model': 32, 'model.num_heads': 4, 'model.mlp_dim': 64,
      'optimizer.warmup_steps': 2, **overrides})


def test_mlm_loss_is_taken_on_the_chosen_tokens_only(data_dir):
  config = _bert_config('bert_pretrain', data_dir)
  model = build.build_model(config.model, 0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = np.random.default_rng(0).integers(0, 256, (8, 32)).astype(np.int32)
  weights = np.ones((8, 32), np.float32)
  weights[:, 24:] = 0  # Past the end of the data: never a target.
  batch = {'inputs': tokens, 'targets': tokens, 'weights': weights}
  objective = objectives.make('mlm', config)
  rng = jax.random.key(3)
  sums, _ = steps.loss_sums(graphdef, params, rest, batch, objective=objective, train=True,
                            rng=rng)

  inputs, targets, chosen = mlm_masking.mask_tokens(
      rng, jnp.asarray(tokens), mask_id=258, vocab_size=259, mask_rate=0.15,
      special_ids=(256, 257, 258, 0), random_vocab_size=256)
  chosen = np.asarray(chosen) * weights
  assert float(sums['weight_sum']) == chosen.sum()
  assert 0.05 < chosen.sum() / weights.sum() < 0.3  # ~15% of the real tokens.
  assert np.any(np.asarray(inputs) == 258) and np.array_equal(targets, tokens)
  # The summed cross-entropy over the chosen tokens of the corrupted input, and nothing else.
  logits = model(inputs)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(tokens))
  assert float(sums['loss_sum']) == pytest.approx(float(jnp.sum(losses * chosen)), rel=1e-5)
  # Accuracy: the chosen tokens the model's argmax gets right, and no other.
  correct = np.asarray(jnp.argmax(logits, -1)) == tokens
  assert float(sums['top1_sum']) == np.sum(correct * chosen)
  other, _ = steps.loss_sums(graphdef, params, rest, batch, objective=objective, train=True,
                             rng=jax.random.key(4))
  assert float(other['weight_sum']) != float(sums['weight_sum'])  # Each step masks afresh.


@pytest.fixture(scope='module')
def mlm_source(data_dir, tmp_path_factory):
  """(workdir, summary) of configs/bert_pretrain.py shrunk to 20 steps."""
  workdir = tmp_path_factory.mktemp('bert_pretrain')
  return workdir, loop.run(_bert_config('bert_pretrain', data_dir), str(workdir))


def test_bert_pretrain_records_the_masked_lm_eval_loss_and_accuracy(mlm_source):
  workdir, summary = mlm_source
  assert summary['finished'] and summary['step'] == 20
  eval_rows = [r for r in writers.read_jsonl(workdir / 'metrics.jsonl') if 'eval_loss' in r]
  assert [r['step'] for r in eval_rows] == [10, 20]
  for row in eval_rows:
    assert 0 < row['eval_loss'] < 2 * np.log(259) and 0 <= row['eval_accuracy'] <= 1
  assert eval_rows[-1]['eval_loss'] < np.log(259)  # Better than uniform over the vocabulary.
  assert json.loads((workdir / 'config.json').read_text())['objective'] == 'mlm'


def test_an_encoder_classifier_from_the_mlm_encoder_must_name_its_head(data_dir, mlm_source):
  config = _bert_config('bert_finetune', data_dir, **{
      'model.num_classes': 16, 'init_from.workdir': str(mlm_source[0]), 'init_from.reinit': ()})
  fresh = nnx.state(build.build_model(config.model, config.seed), nnx.Param)
  with pytest.raises(init_from.InitFromError, match=r'head_DxK: not in the source') as raised:
    init_from.restore_params(config.init_from, fresh)
  assert 'head_bias_K' in str(raised.value) and 'embed_VxD' not in str(raised.value)


# ---------------------------------------------------------------- the CLI chain


def _cli(config_file, workdir, cwd, data_dir, *overrides):
  tiny = {'num_train_steps': 20, 'batch_size': 8, 'log_every_steps': 10, 'eval_every_steps': 20,
          'checkpoint_every_steps': 20, 'num_eval_batches': 2, 'dataset.seq_len': 32,
          'dataset.data_dir': data_dir, 'model.num_layers': 2, 'model.d_model': 32,
          'model.num_heads': 4, 'model.mlp_dim': 64, 'optimizer.warmup_steps': 2}
  command = [sys.executable, '-m', 'jaxscale.main', '--config', str(REPO / 'configs' / config_file),
             '--workdir', workdir] + [f'--config.{k}={v}' for k, v in tiny.items()] + list(overrides)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_pretrain_then_finetune_through_the_cli(data_dir, tmp_path):
  _cli('bert_pretrain.py', 'runs/pretrain', tmp_path, data_dir)
  _cli('bert_finetune.py', 'runs/finetune', tmp_path, data_dir,
       '--config.init_from.workdir=runs/pretrain')
  finetune = tmp_path / 'runs' / 'finetune'

  init_report = json.loads((finetune / 'init_report.json').read_text())
  assert init_report['step'] == 20
  assert init_report['source'] == str(tmp_path / 'runs' / 'pretrain')
  assert sorted(init_report['reinitialised']) == ['head_DxK', 'head_bias_K']
  assert init_report['new'] == [] and init_report['unused'] == []
  assert 'embed_VxD' in init_report['loaded'] and 'final_norm.scale' in init_report['loaded']

  report = json.loads((finetune / 'eval_report.json').read_text())
  config = json.loads((finetune / 'config.json').read_text())
  eval_set_size = 2 * 8  # num_eval_batches * batch_size, all real (the split holds hundreds).
  assert len(report['per_class']) == config['model']['num_classes'] == 16
  assert sum(c['support'] for c in report['per_class'].values()) == eval_set_size
  assert report['num_examples'] == eval_set_size
  assert (finetune / 'eval_report.txt').exists()
  summary = json.loads((finetune / 'summary.json').read_text())
  assert summary['finished'] and 0 <= summary['eval_macro_f1'] <= 1
  assert summary['eval_macro_f1'] == pytest.approx(report['macro_avg']['f1'])
