"""Checkpoints: state restores onto another mesh; the data position survives either way."""

import grain
import jax
import numpy as np
import pytest
import tensorflow as tf

from jaxscale.checkpoint import checkpointing
from jaxscale.config import validation
from jaxscale.core import sharding
from jaxscale.train import experiment, optim
from tests.helpers import tiny_config


def _state_on(config, devices):
  mesh = sharding.make_mesh(config.mesh, devices)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
  _, state, shardings = experiment.create_train_state(config, mesh, optimizer)
  return state, shardings


def _numbers():
  return tf.data.Dataset.range(1000).shuffle(100, seed=0)


def test_state_saved_on_an_fsdp_mesh_restores_onto_one_device_and_another_mesh(tmp_path):
  config = tiny_config(**{'mesh.data': 1, 'mesh.fsdp': 8})
  state, _ = _state_on(config, jax.devices())
  iterator = iter(_numbers())
  manager = checkpointing.make_manager(tmp_path, config)
  checkpointing.save(manager, 3, state, iterator, force=True)
  manager.wait_until_finished()

  for mesh, devices in [(dict(data=1, fsdp=1), jax.devices()[:1]),
                        (dict(data=2, fsdp=4), jax.devices())]:
    # Another seed: a restore that silently kept (or re-created) the target's values would fail.
    target_config = tiny_config(seed=1, **{f'mesh.{k}': v for k, v in mesh.items()})
    target, shardings = _state_on(target_config, devices)
    assert not np.array_equal(np.asarray(target.params['embed_VxD'][...]),
                              np.asarray(state.params['embed_VxD'][...]))
    restored = checkpointing.restore(manager, 3, sharding.abstract_arrays(target, shardings), iter(_numbers()))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.leaves(restored)[1].sharding == jax.tree.leaves(shardings)[1]


def test_data_position_survives_with_and_without_a_serialisable_pipeline(tmp_path):
  config = tiny_config()
  state, shardings = _state_on(config, jax.devices())
  python_op = lambda x: tf.py_function(lambda v: v, [x], tf.int64)  # Not serialisable.
  for name, make in [('native', _numbers), ('python', lambda: _numbers().map(python_op))]:
    iterator = iter(make())
    for _ in range(7):
      next(iterator)
    manager = checkpointing.make_manager(tmp_path / name, config)
    checkpointing.save(manager, 7, state, iterator, force=True)
    manager.wait_until_finished()
    expected = [int(next(iterator)) for _ in range(5)]
    fresh = iter(make())
    checkpointing.restore(manager, 7, sharding.abstract_arrays(state, shardings), fresh)
    assert [int(next(fresh)) for _ in range(5)] == expected, name


def _grain_numbers():
  return iter(grain.MapDataset.range(1000).shuffle(seed=0).to_iter_dataset())


def test_grain_position_is_a_few_bytes_and_the_other_loader_refuses_it(tmp_path):
  config = tiny_config()
  state, shardings = _state_on(config, jax.devices())
  iterator = _grain_numbers()
  for _ in range(7):
    next(iterator)
  manager = checkpointing.make_manager(tmp_path, config)
  checkpointing.save(manager, 7, state, iterator, force=True)
  manager.wait_until_finished()
  expected = [int(next(iterator)) for _ in range(5)]
  data_item = tmp_path / '7' / 'data'
  assert sum(f.stat().st_size for f in data_item.rglob('*') if f.is_file()) < 1024
  abstract = sharding.abstract_arrays(state, shardings)
  fresh = _grain_numbers()
  checkpointing.restore(manager, 7, abstract, fresh)
  assert [int(next(fresh)) for _ in range(5)] == expected
  with pytest.raises(checkpointing.LoaderMismatchError,
                     match="'grain' loader.*--config.dataset.loader=grain") as raised:
    checkpointing.restore(manager, 7, abstract, iter(_numbers()))
  # The CLI prints config errors as one line, without a traceback.
  assert isinstance(raised.value, validation.ConfigError)
