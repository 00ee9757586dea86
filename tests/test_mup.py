"""μP: the coordinate check (flat in width under μP, logits growing under SP), the per-parameter
update multipliers (hidden matrices only, through scanned layers, FSDP and the LR groups) and the
learning-rate transfer summary."""

import contextlib
import io
import json
import math

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxscale.config import validation

from jaxscale.train import checks
from jaxscale.train import optim, steps
from jaxscale.core import param_paths, sharding
from jaxscale.models.build import build_model
from jaxscale.train.experiment import create_train_state
from jaxscale.hparams import __main__ as hparams_cli
from jaxscale.hparams import coord_check, lr_transfer
from jaxscale.models import mup
from jaxscale.scaling.sweeps import run_config
from tests.helpers import random_batch, tiny_config

WIDTHS = (32, 256)
NUM_STEPS = 4
# configs/default.py shrunk to one layer on the markov source; a high constant learning rate makes
# SP's logit growth clear within NUM_STEPS.
OVERRIDES = ['dataset.name=markov', 'dataset.seq_len=16', 'batch_size=8', 'model.num_layers=1',
             'optimizer.learning_rate=0.03']


@pytest.fixture(scope='module')
def sp_check(tmp_path_factory):
  """The command's JSON output and plot path, under SP."""
  png = tmp_path_factory.mktemp('coord') / 'sp.png'
  argv = ['coord-check', '--config', 'configs/default.py', '--widths', ','.join(map(str, WIDTHS)),
          '--parametrization', 'sp', '--steps', str(NUM_STEPS), '--png', str(png)]
  for override in OVERRIDES:
    argv += ['--override', override]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert hparams_cli.main(argv) == 0
  return json.loads(out.getvalue()), png


@pytest.fixture(scope='module')
def mup_check():
  config = run_config.apply_overrides(run_config.load_config_file('configs/default.py'), OVERRIDES)
  return coord_check.coordinate_check(config, WIDTHS, NUM_STEPS, 'mup')


def _widest_over_narrowest(result, layer_type):
  values_WxS = np.asarray(result['activations'][layer_type])
  return values_WxS[-1, -1] / values_WxS[0, -1]  # At the last step recorded.


def test_coord_check_prints_one_json_object_and_a_plot(sp_check):
  result, png = sp_check
  assert result['parametrization'] == 'sp'
  assert result['widths'] == list(WIDTHS) and result['steps'] == list(range(NUM_STEPS))
  assert list(result['activations']) == list(coord_check.LAYER_TYPES)
  for values in result['activations'].values():
    assert np.asarray(values).shape == (len(WIDTHS), NUM_STEPS)
    assert np.all(np.isfinite(values)) and np.all(np.asarray(values) > 0)
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_standard_parametrization_logits_grow_with_width(sp_check):
  assert _widest_over_narrowest(sp_check[0], 'logits') > 2


def test_mup_activations_stay_flat_in_width(mup_check):
  assert mup_check['parametrization'] == 'mup'
  for layer_type in coord_check.LAYER_TYPES:
    # Two-sided: activations that vanish with width fail as those that blow up do.
    assert 0.5 < _widest_over_narrowest(mup_check, layer_type) < 2, layer_type


def _groups(model_config):
  model = nnx.eval_shape(lambda: build_model(model_config, seed=0))
  labels = param_paths.named_leaves(mup.param_groups(nnx.state(model, nnx.Param)))
  return {name: label.get_value() for name, label in labels.items()}


def test_only_hidden_matrices_are_hidden():
  groups = _groups(tiny_config(**{'model.tie_embeddings': False}).model)
  hidden = {n for n, g in groups.items() if g == 'hidden'}
  assert hidden == {f'blocks.{i}.{w}' for i in range(2)
                    for w in ('qkv_DxTxHxK', 'out_HxKxD', 'mlp_in_DxTxF', 'mlp_out_FxD')}
  assert {'embed_VxD', 'unembed_DxV', 'final_norm.scale', 'blocks.0.attn_norm.scale'} <= (
      groups.keys() - hidden)
  vit = ml_collections.ConfigDict(dict(name='vit', num_classes=10, image_size=8, patch_size=2,
                                       width=32, depth=2, num_heads=4, mlp_dim=64,
                                       scan_layers=True))
  vit_hidden = {n for n, g in _groups(vit).items() if g == 'hidden'}
  # Per-head QKV biases ('heads' x 'kv' is one side), patch and position embeddings and the head
  # are vector-like.
  assert vit_hidden == {f'blocks.{w}' for w in ('qkv_DxTxHxK', 'out_HxKxD', 'mlp_in_DxF',
                                                 'mlp_out_FxD')}


def _one_step_deltas(config, model_config_for_optimizer):
  """Each parameter's change after one train step on an 8-device FSDP mesh."""
  mesh = sharding.make_mesh(config.mesh)
  optimizer, lr_fn = optim.make_optimizer(config.optimizer, config.num_train_steps,
                                          model_config_for_optimizer)
  graphdef, state, state_shardings = create_train_state(config, mesh, optimizer)
  before = param_paths.named_leaves(jax.device_get(state.params))
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  train_step, _ = steps.compile_steps(graphdef, optimizer, lr_fn, state_shardings, batch_sharding,
                                      sharding.replicated(mesh))
  batch = random_batch(config.batch_size, config.dataset.seq_len, config.model.vocab_size)
  state, _ = train_step(state, sharding.global_batch(batch, batch_sharding))
  fsdp_sharded = state.params['embed_VxD'][...]
  assert fsdp_sharded.addressable_shards[0].data.size < fsdp_sharded.size
  after = param_paths.named_leaves(jax.device_get(state.params))
  return {name: np.asarray(after[name][...]) - np.asarray(before[name][...]) for name in before}


@pytest.mark.parametrize('scan_layers', [False, True])
def test_mup_scales_hidden_updates_through_scan_fsdp_and_lr_groups(scan_layers):
  width, base = 64, 16
  config = tiny_config(**{
      'model.d_model': width, 'model.mlp_dim': 2 * width, 'model.parametrization': 'mup',
      'model.mup_base_width': base, 'model.scan_layers': scan_layers,
      'mesh.data': 1, 'mesh.fsdp': 8, 'optimizer.schedule': 'constant',
      'optimizer.warmup_steps': 0, 'optimizer.grad_clip_norm': 0.0,
      'optimizer.lr_multipliers': (('^embed', 3.0),), 'optimizer.frozen': ('^final_norm',)})
  mup_deltas = _one_step_deltas(config, config.model)
  # The same parameters and gradients under an optimizer without any multiplier or group.
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.optimizer.lr_multipliers, plain.optimizer.frozen = (), ()
  plain_deltas = _one_step_deltas(plain, None)

  expected = {name: base / width if mup.is_hidden(variable) else 1.0
              for name, variable in param_paths.named_leaves(
                  nnx.state(nnx.eval_shape(lambda: build_model(config.model, 0)), nnx.Param)
              ).items()}
  expected['embed_VxD'] = 3.0
  expected['final_norm.scale'] = 0.0
  assert sum(f == base / width for f in expected.values()) == 4 * (1 if scan_layers else 2)
  for name, factor in expected.items():
    assert np.abs(plain_deltas[name]).max() > 0, name
    np.testing.assert_allclose(mup_deltas[name], factor * plain_deltas[name], rtol=1e-3,
                               atol=1e-7, err_msg=name)


@pytest.mark.parametrize('mlp_dim, base_mlp_dim, mlp_out_factor', [
    (128, 0, 16 / 64),    # The MLP grows with the width: its fan-in ratio is the width's.
    (32, 32, 1.0),        # A fixed MLP width: mlp_out's fan-in does not grow, nor shrinks its LR.
    (64, 16, 16 / 64)])
def test_mup_scales_each_hidden_matrix_by_its_own_fan_in_ratio(mlp_dim, base_mlp_dim,
                                                               mlp_out_factor):
  config = tiny_config(**{'model.d_model': 64, 'model.mlp_dim': mlp_dim,
                          'model.parametrization': 'mup', 'model.mup_base_width': 16,
                          'model.mup_base_mlp_dim': base_mlp_dim})
  checks.validate(config)
  params = nnx.state(nnx.eval_shape(lambda: build_model(config.model, 0)), nnx.Param)
  params = jax.tree.map(lambda v: jax.numpy.ones(v.shape), params)
  scaling = mup.update_scaling(config.model, 'adamw')
  updates, _ = scaling.update(params, scaling.init(params), params)
  factors = {name: float(np.asarray(u[...]).max())
             for name, u in param_paths.named_leaves(updates).items()}
  expected = {'qkv_DxTxHxK': 16 / 64, 'out_HxKxD': 16 / 64, 'mlp_in_DxTxF': 16 / 64,
              'mlp_out_FxD': mlp_out_factor}
  for name, factor in factors.items():
    assert factor == pytest.approx(expected.get(name.split('.')[-1], 1.0)), name


def test_validation_names_what_mup_needs():
  config = tiny_config(**{'model.parametrization': 'mup'})
  with pytest.raises(validation.ConfigError, match='mup_base_width'):
    checks.validate(config)
  config.model.mup_base_width = 16
  config.optimizer.name = 'sgd'
  with pytest.raises(validation.ConfigError, match='adamw'):
    checks.validate(config)
  config.model.parametrization = 'mu'
  with pytest.raises(validation.ConfigError, match='parametrization'):
    checks.validate(config)


def test_lr_transfer_drift_is_the_parabola_optimum_slope_per_width_doubling():
  grid = [2.0 ** e for e in range(-9, -3)]

  def rows(parametrization, optimum_of_width):
    return [{'parametrization': parametrization, 'width': width, 'learning_rate': lr,
             # A diverged run (inf) at the largest rate must not move the optimum.
             'loss': math.inf if lr == grid[-1] else
                     1.0 + 0.1 * (math.log2(lr) - optimum_of_width(width)) ** 2}
            for width in (32, 64, 128) for lr in grid]

  summary = lr_transfer.transfer_summary(
      rows('sp', lambda w: -6.3 - 0.5 * math.log2(w / 32)) + rows('mup', lambda w: -6.3))
  assert summary['sp']['drift_per_doubling'] == pytest.approx(-0.5, abs=1e-3)
  assert summary['mup']['drift_per_doubling'] == pytest.approx(0.0, abs=1e-3)
  assert summary['sp']['optimal_log2_lr']['32'] == pytest.approx(-6.3, abs=1e-3)
  assert summary['mup']['optimum_at_grid_edge'] == []
  # An optimum beyond the grid is the grid's end, flagged.
  edge = lr_transfer.transfer_summary(rows('sp', lambda w: -12.0))
  assert edge['sp']['optimal_log2_lr']['64'] == -9.0
  assert edge['sp']['optimum_at_grid_edge'] == [32, 64, 128]
