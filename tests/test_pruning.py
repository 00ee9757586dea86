"""Magnitude pruning in the optimizer: the gradual schedule, per-layer, global and N:M masks,
scanned stacks, and a pruned run's zeros surviving a save, restore and exact resume."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxscale.compress import pruning
from jaxscale.config import config_base
from jaxscale.config.validation import ConfigError
from jaxscale.core import param_paths
from jaxscale.metrics import writers
from jaxscale.models import build
from jaxscale.train.checks import validate
from tests.helpers import load_config_file, straight_and_resumed, tiny_config

SCHEDULE = {'start_step': 2, 'end_step': 14, 'update_every': 4}  # Masks at 2, 6, 10, 14.


def _pruning_config(**overrides):
  c = config_base.get_base_config().pruning
  c.update({'sparsity': 0.8, **SCHEDULE, **overrides})
  return c


def _zhu_gupta(step, final=0.8, start=2, end=14):
  progress = min(max((step - start) / (end - start), 0.0), 1.0)
  return final * (1 - (1 - progress) ** 3)


def _mlp_params():
  model_config = ml_collections.ConfigDict(dict(name='mlp', num_classes=10, image_size=8,
                                                hidden_dims=(32, 16), channels=1))
  return _init_params(model_config)


def _transformer_params(scan_layers: bool):
  return _init_params(tiny_config(**{'model.scan_layers': scan_layers}).model)


def _init_params(model_config):
  return jax.jit(lambda: nnx.state(build.build_model(model_config, 0), nnx.Param))()


def _train_randomly(params, config, num_steps: int):
  """Host copies of the params after each of `num_steps` SGD updates on random gradients."""
  tx = pruning.wrap(optax.sgd(0.1), config)

  @jax.jit
  def step(params, state, key):
    grads = jax.tree.map(lambda x: jax.random.normal(key, x.shape), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state, history = tx.init(params), []
  for t in range(1, num_steps + 1):
    params, state = step(params, state, jax.random.key(t))
    history.append({n: np.asarray(v.get_value())
                    for n, v in param_paths.named_leaves(params).items()})
  return history, state


def test_the_schedule_is_zhu_and_gupta_with_mask_updates_on_its_grid():
  config = _pruning_config()
  for step in range(0, 20):
    np.testing.assert_allclose(float(pruning.target_sparsity(step, config)), _zhu_gupta(step),
                               rtol=1e-6, atol=1e-7)
  updates = [t for t in range(0, 20) if pruning.is_mask_update(t, config)]
  assert updates == [2, 6, 10, 14]
  uneven = _pruning_config(end_step=12)  # The end step is always an update, on the grid or not.
  assert [t for t in range(20) if pruning.is_mask_update(t, uneven)] == [2, 6, 10, 12]
  one_shot = _pruning_config(start_step=5, end_step=5)
  assert [float(pruning.target_sparsity(t, one_shot)) for t in (4, 5, 9)] == pytest.approx(
      [0, 0.8, 0.8])


def test_each_layer_reaches_the_scheduled_sparsity_at_the_scheduled_steps():
  params = _transformer_params(scan_layers=True)  # Each layer of the stack on its own.
  config = _pruning_config()
  found = pruning.layouts(params, config)
  history, _ = _train_randomly(params, config, num_steps=16)
  held = 0.0
  for t, values in enumerate(history, start=1):
    if pruning.is_mask_update(t, config):
      held = _zhu_gupta(t)
    for name, value in values.items():
      if name not in found:
        assert np.count_nonzero(value == 0) == 0, (t, name)  # Biases and norms stay dense.
        continue
      layers = value.reshape(value.shape[0], -1) if found[name].stacked else value.reshape(1, -1)
      for layer in layers:  # Each layer of a scanned stack on its own.
        assert abs(np.count_nonzero(layer == 0) - held * layer.size) <= 1, (t, name)
      if t > 1:  # Once pruned, a weight stays exactly zero.
        assert np.all(value[history[t - 2][name] == 0] == 0), (t, name)
  assert held == pytest.approx(0.8)


def test_global_scope_meets_the_target_overall_with_layers_pruned_unevenly():
  params = _mlp_params()
  # Layers of different scales: a global threshold prunes the small one hardest.
  params['hidden'][1]['kernel'].set_value(params['hidden'][1]['kernel'].get_value() * 0.1)
  config = _pruning_config(scope='global', start_step=1, end_step=1)
  found = pruning.layouts(params, config)
  final = _train_randomly(params, config, num_steps=1)[0][-1]
  zeros = {n: np.count_nonzero(final[n] == 0) / final[n].size for n in found}
  total = sum(final[n].size for n in found)
  assert abs(sum(np.count_nonzero(final[n] == 0) for n in found) - 0.8 * total) <= 1
  assert zeros['hidden.1.kernel'] > 0.95 and zeros['hidden.0.kernel'] < 0.8, zeros


@pytest.mark.parametrize('scan_layers', [False, True])
def test_n_m_masks_keep_exactly_n_of_every_m_inputs(scan_layers):
  params = _transformer_params(scan_layers)
  config = _pruning_config(method='nm', sparsity=0.5, n=2, m=4)
  found = pruning.layouts(params, config)
  history, state = _train_randomly(params, config, num_steps=15)

  def kept_per_group(value, layout):
    per_layer = value if layout.stacked else value[None]
    groups = np.moveaxis(per_layer, layout.input_axis + 1, -1).reshape(-1, 4)
    return np.count_nonzero(groups, axis=1)

  for name, layout in found.items():
    assert np.all(kept_per_group(history[-1][name], layout) == 2), name
    mask = np.asarray(param_paths.named_leaves(state.masks)[name].get_value())
    np.testing.assert_array_equal(mask, history[-1][name] != 0)
    # Step 6 of the schedule asks for sparsity 0.35: one of every 4 pruned, not yet two.
    assert np.all(kept_per_group(history[5][name], layout) == 3), name


def test_bad_pruning_configs_name_the_key():
  config = tiny_config(**{'pruning.sparsity': 0.6, 'pruning.method': 'nm', 'pruning.end_step': 10})
  with pytest.raises(ConfigError, match=r'pruning.sparsity=0.5'):
    validate(config)
  config = tiny_config(**{'pruning.sparsity': 0.5, 'pruning.end_step': 0})
  with pytest.raises(ConfigError, match='end_step=0'):
    validate(config)
  params = _mlp_params()
  with pytest.raises(ConfigError, match='no parameter is prunable'):
    pruning.layouts(params, _pruning_config(exclude=('.*',)))
  with pytest.raises(ConfigError, match=r'head.kernel has 16 inputs.*not a multiple of 3'):
    pruning.layouts(params, _pruning_config(method='nm', n=1, m=3))


# ------------------------------------------------------------------- a pruned training run


def _pruned_digits(data_dir, **overrides):
  """A small MLP on digits, FSDP over 2 devices, pruned to 80% between steps 2 and 14."""
  return load_config_file('mlp_digits', **{
      'dataset.data_dir': str(data_dir), 'num_train_steps': 16, 'log_every_steps': 2,
      'eval_every_steps': 16, 'checkpoint_every_steps': 8, 'num_eval_batches': 1,
      'model.hidden_dims': (64, 32), 'optimizer.warmup_steps': 2, 'mesh.fsdp': 2,
      'pruning.sparsity': 0.8, **{f'pruning.{k}': v for k, v in SCHEDULE.items()}, **overrides})


def _saved_state(workdir, step):
  return ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')


def test_a_pruned_run_logs_its_sparsity_saves_zeros_and_resumes_exactly(tmp_path, monkeypatch):
  data_dir = tmp_path / 'tfds'
  config = _pruned_digits(data_dir)
  straight, resumed = straight_and_resumed(config, tmp_path, monkeypatch, interrupt_after=8)

  assert resumed['eval_loss'] == straight['eval_loss']
  final = {name: _saved_state(tmp_path / name, 16) for name in ('straight', 'resumed')}
  for part in ('params', 'opt_state'):  # The masks live in the optimizer state.
    expected, actual = (jax.tree.leaves(final[name][part]) for name in ('straight', 'resumed'))
    assert len(expected) == len(actual)
    assert all(np.array_equal(a, b) for a, b in zip(expected, actual)), part

  rows = {r['step']: r for r in writers.read_jsonl(tmp_path / 'resumed' / 'metrics.jsonl')
          if 'sparsity' in r}
  for step, row in rows.items():
    held = _zhu_gupta(max(t for t in (0, 2, 6, 10, 14) if t <= step))
    assert row['sparsity'] == pytest.approx(held, abs=1e-3), step
    assert row['sparsity/hidden.1'] == pytest.approx(held, abs=2e-3), step
  assert {2, 6, 10, 14, 16} <= set(rows)
  # Saved parameters hold the zeros themselves: step 8 at s_6, step 16 at s_f, biases dense.
  for step, sparsity in ((8, _zhu_gupta(6)), (16, 0.8)):
    params = _saved_state(tmp_path / 'resumed', step)['params']
    for layer in ('0', '1'):
      kernel = np.asarray(params['hidden'][layer]['kernel']['value'])
      assert abs(np.count_nonzero(kernel == 0) - sparsity * kernel.size) <= 1, (step, layer)
      assert np.count_nonzero(np.asarray(params['hidden'][layer]['bias']['value']) == 0) < 4
