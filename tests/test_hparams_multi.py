"""K models in one vmapped program train as K solo runs would."""

import json

import numpy as np
import pytest
from flax import nnx

from jaxscale.config import validation

from jaxscale.train import checks
from jaxscale.metrics import writers
from jaxscale.core import param_paths
from jaxscale.train import loop
from jaxscale.hparams import multi
from jaxscale.hparams import multi_loop
from jaxscale.models import MODELS
from tests.helpers import tiny_config

VALUES = {'learning_rate': [3e-3, 3e-2], 'seed': [0, 1], 'init_scale': [1.0, 2.0]}


def config():
  return tiny_config(num_train_steps=6, log_every_steps=2, eval_every_steps=3,
                     checkpoint_every_steps=3, **{'dataset.name': 'markov'})


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multi')
  multi_dirs = [root / f'multi{k}' for k in range(2)]
  multi_loop.run(config(), [str(d) for d in multi_dirs], VALUES)
  solo_dirs = []
  for k, solo_config in enumerate(multi.model_configs(config(), VALUES)):
    solo_dirs.append(root / f'solo{k}')
    loop.run(solo_config, solo_dirs[-1])
  return multi_dirs, solo_dirs


def test_each_vmapped_model_matches_its_solo_run(runs):
  multi_dirs, solo_dirs = runs
  compared = ('train_loss', 'learning_rate', 'grad_norm', 'param_norm', 'eval_loss')
  for multi_dir, solo_dir in zip(multi_dirs, solo_dirs):
    multi_rows = writers.read_jsonl(multi_dir / 'metrics.jsonl')
    solo_rows = writers.read_jsonl(solo_dir / 'metrics.jsonl')
    assert [(r['step'], sorted(r)) for r in multi_rows] == [(r['step'], sorted(r))
                                                            for r in solo_rows]
    for multi_row, solo_row in zip(multi_rows, solo_rows):
      for key in compared:
        if key in solo_row:
          assert multi_row[key] == pytest.approx(solo_row[key], rel=1e-4, abs=1e-6), (
              key, multi_row['step'])
    # XLA's count (per model of the K-model program) is the matmuls and more; the solo run's
    # also counts the optimizer's elementwise work once per device it is replicated on.
    for row in (multi_rows[0], solo_rows[0]):
      assert row['flops_per_step'] < row['flops_per_step_xla'] < 3 * row['flops_per_step'], row
    multi_summary = json.loads((multi_dir / 'summary.json').read_text())
    solo_summary = json.loads((solo_dir / 'summary.json').read_text())
    assert sorted(multi_summary) == sorted(solo_summary)
    assert multi_summary['eval_loss'] == pytest.approx(solo_summary['eval_loss'], rel=1e-4)
  # The models really differ: their own learning rates and seeds, not copies of one run.
  losses = [json.loads((d / 'summary.json').read_text())['eval_loss'] for d in multi_dirs]
  assert abs(losses[0] - losses[1]) > 1e-3


def test_multi_refuses_values_that_change_the_program():
  with pytest.raises(ValueError, match='varies only'):
    multi.model_configs(config(), {'batch_size': [8, 16]})
  with pytest.raises(ValueError, match='different lengths'):
    multi.model_configs(config(), {'learning_rate': [1e-3, 1e-2], 'seed': [0]})


def initial_weights(model_config, init_scale):
  kwargs = {k: v for k, v in model_config.items() if k != 'name'}
  model = MODELS.get(model_config.name)(**{**kwargs, 'init_scale': init_scale},
                                        rngs=nnx.Rngs(0))
  return {name: np.asarray(v[...])
          for name, v in param_paths.named_leaves(nnx.state(model, nnx.Param)).items()}


@pytest.mark.parametrize('changes', [{}, {'model.parametrization': 'mup',
                                          'model.mup_base_width': 16},
                                     {'model.scan_layers': True}])
def test_init_scale_multiplies_the_weights_not_the_vectors(changes):
  model_config = tiny_config(**changes).model
  base, doubled = initial_weights(model_config, 1.0), initial_weights(model_config, 2.0)
  scaled = [name for name in base if base[name].std() > 0
            and np.std(doubled[name]) == pytest.approx(2 * base[name].std(), rel=1e-6)]
  kept = [name for name in base if np.array_equal(doubled[name], base[name])]
  assert sorted(scaled + kept) == sorted(base)
  assert any('embed_VxD' in n for n in scaled) and any('qkv' in n for n in scaled)
  assert any('mlp_out' in n for n in scaled) and all('norm' in n for n in kept) and kept


def test_init_scale_composes_with_mup():
  """μP's stds (the embedding at the base width's scale) times init_scale."""
  mup = tiny_config(**{'model.parametrization': 'mup', 'model.mup_base_width': 16}).model
  sp = tiny_config().model
  mup_embed = initial_weights(mup, 2.0)['embed_VxD'].std()
  sp_embed = initial_weights(sp, 2.0)['embed_VxD'].std()
  # SP's embedding std is 1/sqrt(32), μP's 1/sqrt(16): the ratio survives the scale.
  assert mup_embed / sp_embed == pytest.approx(2 ** 0.5, rel=0.1)
  assert mup_embed == pytest.approx(2 * 16 ** -0.5, rel=0.1)


@pytest.mark.parametrize('model', [
    {'name': 'mlp', 'num_classes': 3, 'image_size': 2, 'hidden_dims': (8,), 'channels': 1},
    {'name': 'vit', 'num_classes': 3, 'image_size': 8, 'patch_size': 4, 'width': 16, 'depth': 1,
     'num_heads': 2, 'mlp_dim': 32, 'channels': 1}])
def test_init_scale_scales_the_vision_models_weights(model):
  model_config = type(tiny_config().model)(model)
  base, tripled = initial_weights(model_config, 1.0), initial_weights(model_config, 3.0)
  scaled = 0
  for name in base:
    factor = 3.0 if base[name].ndim >= 2 else 1.0  # Biases, norms and cls keep their init.
    np.testing.assert_allclose(tripled[name], factor * base[name], rtol=1e-6)
    scaled += factor == 3.0 and np.abs(base[name]).max() > 0
  assert scaled >= 2


@pytest.mark.parametrize('scale', [0.0, -1.0, True, 'big'])
def test_config_validation_refuses_a_bad_init_scale(scale):
  fields = tiny_config().to_dict()
  fields['model']['init_scale'] = scale
  config = type(tiny_config())(fields)
  assert config.model.init_scale is scale or config.model.init_scale == scale
  with pytest.raises(validation.ConfigError, match='init_scale'):
    checks.validate(config)
