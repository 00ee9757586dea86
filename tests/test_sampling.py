"""Generation: greedy = step-by-step argmax, seeded sampling is reproducible, a trained model
emits its data's transitions, and a model restored from its workdir is the one that was saved."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from jaxscale.checkpoint import checkpointing
from jaxscale.config import workdir as workdir_lib
from jaxscale.core import sharding
from jaxscale.data import markov_chain
from jaxscale.inference import sampling
from jaxscale.models import MODELS, build
from jaxscale.train import experiment, loop, optim
from tests.helpers import tiny_config


@pytest.fixture(scope='module')
def model():
  return build.build_model(tiny_config().model, seed=0)


def _prompt(batch=2, length=5, vocab_size=64):
  return np.random.default_rng(0).integers(0, vocab_size, (batch, length), dtype=np.int32)


def test_greedy_is_the_argmax_of_the_models_logits_step_by_step(model):
  prompt = _prompt()
  generated = sampling.generate(model, prompt, max_new_tokens=6)
  tokens = prompt
  for _ in range(6):
    next_tokens = np.argmax(np.asarray(model(jnp.asarray(tokens)))[:, -1], axis=-1)
    tokens = np.concatenate([tokens, next_tokens[:, None].astype(np.int32)], axis=1)
  np.testing.assert_array_equal(generated, tokens[:, prompt.shape[1]:])
  np.testing.assert_array_equal(sampling.generate(model, prompt, max_new_tokens=6), generated)


def test_a_one_dimensional_prompt_gives_one_dimensional_tokens(model):
  prompt = _prompt()
  single = sampling.generate(model, prompt[1], max_new_tokens=4)
  assert single.shape == (4,)
  np.testing.assert_array_equal(single, sampling.generate(model, prompt, 4)[1])


def test_sampling_is_reproducible_for_a_key_and_tends_to_greedy_as_temperature_falls(model):
  prompt = _prompt()
  greedy = sampling.generate(model, prompt, max_new_tokens=8)

  def sample(seed, **kwargs):
    return sampling.generate(model, prompt, max_new_tokens=8, rng=jax.random.key(seed), **kwargs)

  np.testing.assert_array_equal(sample(1, temperature=1.0), sample(1, temperature=1.0))
  assert not np.array_equal(sample(1, temperature=2.0), sample(2, temperature=2.0))
  np.testing.assert_array_equal(sample(3, temperature=1e-6), greedy)
  np.testing.assert_array_equal(sample(4, temperature=5.0, top_k=1), greedy)


def test_top_k_samples_only_among_the_k_most_likely_tokens(model):
  prompt = _prompt(batch=1, length=3)
  first = [sampling.generate(model, prompt, 1, temperature=10.0, top_k=3,
                             rng=jax.random.key(seed))[0, 0] for seed in range(30)]
  top3 = np.argsort(np.asarray(model(jnp.asarray(prompt)))[0, -1])[-3:]
  assert set(first) <= set(top3.tolist())
  assert len(set(first)) > 1  # At temperature 10 the three are near equally likely.


def test_bad_arguments_say_what_to_pass(model):
  with pytest.raises(ValueError, match='needs rng'):
    sampling.generate(model, _prompt(), 4, temperature=1.0)
  with pytest.raises(ValueError, match='shape'):
    sampling.generate(model, np.zeros((2, 0), np.int32), 4)
  with pytest.raises(ValueError, match='top_k'):
    sampling.generate(model, _prompt(), 4, temperature=1.0, top_k=0, rng=jax.random.key(0))


def test_byte_helpers_round_trip_and_stop_at_the_document_separator():
  tokens = sampling.encode_bytes('def f(x):\n  return "é"')
  assert tokens.dtype == np.int32 and tokens.max() < 256
  assert sampling.decode_bytes(tokens) == 'def f(x):\n  return "é"'
  assert sampling.decode_bytes([104, 105, 0, 106]) == 'hi'
  assert sampling.decode_bytes([104, 105, 0, 106], stop_at_separator=False) == 'hi\x00j'
  with pytest.raises(ValueError, match='byte tokenizer'):
    sampling.decode_bytes([300])


def test_restored_model_gives_the_saved_models_logits(tmp_path):
  config = tiny_config()
  mesh = sharding.make_mesh(config.mesh)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
  graphdef, state, _ = experiment.create_train_state(config, mesh, optimizer)
  # Saved parameters that differ from a fresh init of config.seed, so restoring must read them.
  state = state.replace(params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.params))
  workdir_lib.record_config(tmp_path, config)
  manager = checkpointing.make_manager(tmp_path, config)
  checkpointing.save(manager, 7, state, iter(tf.data.Dataset.range(3)), force=True)
  manager.wait_until_finished()

  restored, restored_config = sampling.restore_model(tmp_path)
  assert restored_config.model.d_model == config.model.d_model
  saved = nnx.merge(graphdef, state.params, state.model_state)
  tokens = jnp.asarray(_prompt(length=8))
  np.testing.assert_allclose(np.asarray(restored(tokens)), np.asarray(saved(tokens)),
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.asarray(restored(tokens)),
                         np.asarray(build.build_model(config.model, config.seed)(tokens)))


class _ScaledEmbedding(nnx.Module):
  """A model with a non-parameter variable, as batch-norm models have."""

  def __init__(self, *, vocab_size: int, rngs: nnx.Rngs):
    self.embed = nnx.Param(jax.random.normal(rngs.params(), (vocab_size, vocab_size)))
    self.scale = nnx.BatchStat(jnp.ones(()))

  def __call__(self, tokens_BxL):
    return self.embed[...][tokens_BxL] * self.scale[...]


def test_restore_reads_non_parameter_variables_too(tmp_path, monkeypatch):
  # Registered for this test only, so the registry other tests see is unchanged.
  monkeypatch.setitem(MODELS._entries, 'scaled_embedding', _ScaledEmbedding)
  config = tiny_config()
  config.model = ml_collections.ConfigDict({'name': 'scaled_embedding', 'vocab_size': 16})
  mesh = sharding.make_mesh(config.mesh)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
  graphdef, state, _ = experiment.create_train_state(config, mesh, optimizer)
  state = state.replace(model_state=jax.tree.map(lambda x: x * 3.0, state.model_state))
  workdir_lib.record_config(tmp_path, config)
  manager = checkpointing.make_manager(tmp_path, config)
  checkpointing.save(manager, 1, state, iter(tf.data.Dataset.range(3)), force=True)
  manager.wait_until_finished()

  restored, _ = sampling.restore_model(tmp_path)
  assert float(restored.scale[...]) == 3.0
  tokens = jnp.arange(4)[None]
  np.testing.assert_allclose(np.asarray(restored(tokens)),
                             np.asarray(nnx.merge(graphdef, state.params, state.model_state)(tokens)))


def test_restore_without_a_run_or_checkpoint_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    sampling.restore_model(tmp_path)
  workdir_lib.record_config(tmp_path, tiny_config())
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    sampling.restore_model(tmp_path)


def _allowed_fraction(tokens, chain) -> float:
  """Fraction of generated tokens the chain could emit after the two before them."""
  contexts = tokens[:-2] * chain.vocab_size + tokens[1:-1]
  return float(np.mean([t in chain.successors[c] for c, t in zip(contexts, tokens[2:])]))


@pytest.mark.slow
def test_a_model_trained_on_markov_data_generates_the_chains_transitions(tmp_path):
  """The 'tiny' chain lets 2 of 4 tokens follow each context: chance is 1/2, a trained model
  nearly always picks an allowed one."""
  config = tiny_config(**{
      'dataset.name': 'markov', 'dataset.builder_config': 'tiny',
      'dataset.data_dir': str(tmp_path / 'tfds'), 'model.vocab_size': 0, 'batch_size': 16,
      'num_train_steps': 150, 'eval_every_steps': 150, 'checkpoint_every_steps': 150,
      'optimizer.learning_rate': 1e-2, 'async_checkpointing': False})
  loop.run(config, str(tmp_path / 'run'))
  model, _ = sampling.restore_model(tmp_path / 'run')
  chain = markov_chain.random_chain(vocab_size=4, order=2, branching=2, concentration=1.0,
                                    seed=0)
  prompt = np.array([0, chain.successors[0, 0]], np.int32)  # 0 0 -> s is a transition.
  tokens = sampling.generate(model, prompt, max_new_tokens=60, temperature=1.0,
                             rng=jax.random.key(0))
  assert tokens.shape == (60,)
  assert _allowed_fraction(np.concatenate([prompt, tokens]), chain) > 0.9
