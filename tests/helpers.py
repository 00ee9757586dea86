"""Small configs and batches shared by the tests."""

import itertools
import pathlib

import numpy as np
import pytest

from jaxscale.config import config_base

CONFIG_DIR = pathlib.Path(__file__).parent.parent / 'configs'


# A 2-layer, d_model 32 LM that trains in seconds on CPU.
TINY = {
    'num_train_steps': 20, 'batch_size': 8, 'log_every_steps': 5, 'eval_every_steps': 10,
    'checkpoint_every_steps': 10, 'num_eval_batches': 2, 'dataset.seq_len': 16,
    'model.vocab_size': 64, 'model.num_layers': 2, 'model.d_model': 32, 'model.num_heads': 4,
    'model.mlp_dim': 64, 'optimizer.warmup_steps': 2,
}


def tiny_config(**overrides):
  """The base config with `TINY`'s settings, then `overrides` (dotted keys)."""
  return config_base.set_existing_keys(config_base.get_base_config(), {**TINY, **overrides})


def markov_config(data_dir, **overrides):
  """`tiny_config` on the markov source in `data_dir` (its vocabulary, 32), one eval batch."""
  return tiny_config(**{
      'dataset.name': 'markov', 'dataset.data_dir': str(data_dir), 'model.vocab_size': 0,
      'num_eval_batches': 1, **overrides})


def short_markov_config(data_dir, **overrides):
  """`markov_config` for 10 steps, evaluated and saved at 10 (conftest's `tiny_lm_run`)."""
  return markov_config(data_dir, **{
      'num_train_steps': 10, 'eval_every_steps': 10, 'checkpoint_every_steps': 10, **overrides})


def digits_config(data_dir, **overrides):
  """configs/mlp_digits.py with its data in `data_dir`, and `overrides`."""
  return load_config_file('mlp_digits', **{'dataset.data_dir': str(data_dir), **overrides})


def digits_mlp_config(data_dir, **overrides):
  """`digits_config` at hidden width 64 for 150 steps, evaluated and saved at 150 (conftest's
  `digits_mlp_run`)."""
  return digits_config(data_dir, **{
      'model.hidden_dims': (64,), 'num_train_steps': 150, 'eval_every_steps': 150,
      'checkpoint_every_steps': 150, 'log_every_steps': 10, **overrides})


def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
          'weights': np.ones((batch_size, seq_len), np.float32)}


def first_batches(dataset, num_batches: int) -> list[dict]:
  """The first batches of a tf.data pipeline, as numpy."""
  return list(itertools.islice(dataset.as_numpy_iterator(), num_batches))


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def assert_halves_make_the_whole(whole, halves):
  """Each of the `whole` global batches is its two processes' `halves` (two lists of batches)
  stacked, row for row."""
  for batch, first_half, second_half in zip(whole, *halves):
    for key in batch:
      np.testing.assert_array_equal(batch[key], np.concatenate([first_half[key],
                                                                second_half[key]]))


def assert_iterator_checkpoint_resumes(make_dataset, tmp_path, *, skip: int, take: int):
  """A tf.data iterator of `make_dataset()` checkpointed after `skip` batches restores into a new
  one (of a second `make_dataset()`) that yields the same next `take` batches."""
  import tensorflow as tf  # noqa: PLC0415  (loads TensorFlow)
  iterator = iter(make_dataset())
  for _ in range(skip):
    next(iterator)
  path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / 'iterator'))
  expected = [{k: v.numpy() for k, v in next(iterator).items()} for _ in range(take)]
  resumed = iter(make_dataset())
  tf.train.Checkpoint(iterator=resumed).read(path).assert_consumed()
  assert_same_batches(expected, [{k: v.numpy() for k, v in next(resumed).items()}
                                 for _ in range(take)])


def load_config_file(name: str, **overrides):
  """`configs/<name>.py`'s get_config(), with dotted-key overrides."""
  return config_base.set_existing_keys(config_base.load_config_file(CONFIG_DIR / f'{name}.py'),
                                       overrides)


def straight_and_resumed(config, tmp_path, monkeypatch, *, interrupt_after: int):
  """Summaries of `config` run uninterrupted in `tmp_path/'straight'` and, in
  `tmp_path/'resumed'`, stopped right after saving step `interrupt_after`, then resumed."""
  from jaxscale.checkpoint import checkpointing  # noqa: PLC0415  (JAX after conftest's environment)
  from jaxscale.train import loop
  straight = loop.run(config, str(tmp_path / 'straight'))
  real_save = interrupt_after_saving(monkeypatch, step=interrupt_after)
  with pytest.raises(KeyboardInterrupt):
    loop.run(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(checkpointing, 'save', real_save)
  return straight, loop.run(config, str(tmp_path / 'resumed'))


def interrupt_after_saving(monkeypatch, step: int):
  """Makes the next run stop (KeyboardInterrupt, as a preemption would) right after its
  checkpoint of `step` is written; `monkeypatch.undo()` or a new monkeypatch restores saving."""
  from jaxscale.checkpoint import checkpointing  # noqa: PLC0415  (JAX-free import of this module)
  real_save = checkpointing.save

  def save_then_die(manager, saved_step, *args, **kwargs):
    real_save(manager, saved_step, *args, **kwargs)
    if saved_step == step:
      manager.wait_until_finished()
      raise KeyboardInterrupt('simulated preemption')

  monkeypatch.setattr(checkpointing, 'save', save_then_die)
  return real_save
